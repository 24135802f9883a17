// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Vmm;
using Hyve.X86;

namespace Hyve.Boot;

/// <summary>One PT_LOAD program header.</summary>
internal readonly record struct ElfSegment(ulong Offset, ulong Vaddr, ulong Paddr, ulong FileSize, ulong MemSize);

/// <summary>An ELF32 or ELF64 little-endian x86 executable: its loadable segments, entry point and PVH entry, checked against the file.</summary>
internal sealed class ElfImage
{
    private const uint PtLoad = 1, PtNote = 4;
    private const uint XenElfnotePhys32Entry = 18;

    public bool Is64 { get; private init; }
    public ulong Entry { get; private init; }
    public List<ElfSegment> Loads { get; } = [];
    public ulong? PvhEntry { get; private set; }

    public static bool IsElf(ReadOnlySpan<byte> f) => f.Length >= 4 && f[0] == 0x7f && f[1] == (byte)'E' && f[2] == (byte)'L' && f[3] == (byte)'F';

    public static ElfImage Parse(byte[] f, BootContext ctx)
    {
        if (f.Length < 52) throw ctx.Fail("truncated ELF header");
        bool is64 = f[4] switch { 1 => false, 2 => true, _ => throw ctx.Fail($"bad ELF class {f[4]}") };
        if (f[5] != 1) throw ctx.Fail("big-endian ELF");
        var s = f.AsSpan();
        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(s[18..]);
        if (machine != (is64 ? 62 : 3)) throw ctx.Fail($"ELF{(is64 ? 64 : 32)} for machine {machine}, not {(is64 ? "x86-64" : "i386")}");
        ushort type = BinaryPrimitives.ReadUInt16LittleEndian(s[16..]);
        if (type != 2) throw ctx.Fail($"ELF type {type} is not an executable");
        if (is64 && f.Length < 64) throw ctx.Fail("truncated ELF header");
        ulong entry = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(s[24..]) : BinaryPrimitives.ReadUInt32LittleEndian(s[24..]);
        ulong phoff = is64 ? BinaryPrimitives.ReadUInt64LittleEndian(s[32..]) : BinaryPrimitives.ReadUInt32LittleEndian(s[28..]);
        int phentsize = BinaryPrimitives.ReadUInt16LittleEndian(s[(is64 ? 54 : 42)..]);
        int phnum = BinaryPrimitives.ReadUInt16LittleEndian(s[(is64 ? 56 : 44)..]);
        if (phnum == 0) throw ctx.Fail("ELF has no program headers");
        if (phentsize < (is64 ? 56 : 32) || phoff > (ulong)f.Length || (ulong)phnum * (ulong)phentsize > (ulong)f.Length - phoff)
            throw ctx.Fail("truncated or corrupt ELF program headers");
        var img = new ElfImage { Is64 = is64, Entry = entry };
        for (int i = 0; i < phnum; i++)
        {
            var p = s.Slice((int)phoff + i * phentsize, phentsize);
            uint ptype = BinaryPrimitives.ReadUInt32LittleEndian(p);
            ulong off, vaddr, paddr, filesz, memsz;
            if (is64)
            {
                off = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
                vaddr = BinaryPrimitives.ReadUInt64LittleEndian(p[16..]);
                paddr = BinaryPrimitives.ReadUInt64LittleEndian(p[24..]);
                filesz = BinaryPrimitives.ReadUInt64LittleEndian(p[32..]);
                memsz = BinaryPrimitives.ReadUInt64LittleEndian(p[40..]);
            }
            else
            {
                off = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
                vaddr = BinaryPrimitives.ReadUInt32LittleEndian(p[8..]);
                paddr = BinaryPrimitives.ReadUInt32LittleEndian(p[12..]);
                filesz = BinaryPrimitives.ReadUInt32LittleEndian(p[16..]);
                memsz = BinaryPrimitives.ReadUInt32LittleEndian(p[20..]);
            }
            if (ptype is not (PtLoad or PtNote)) continue;
            if (off > (ulong)f.Length || filesz > (ulong)f.Length - off)
                throw ctx.Fail($"truncated ELF: segment {i} needs bytes 0x{off:x}-0x{off + filesz:x} of a {f.Length}-byte file");
            if (ptype == PtNote) { img.ReadNotes(s.Slice((int)off, (int)filesz)); continue; }
            if (filesz > memsz) throw ctx.Fail($"corrupt ELF: segment {i} has more file bytes than memory bytes");
            if (memsz == 0) continue;
            img.Loads.Add(new ElfSegment(off, vaddr, paddr, filesz, memsz));
        }
        if (img.Loads.Count == 0) throw ctx.Fail("ELF has no loadable segments");
        return img;
    }

    // Notes: namesz, descsz, type, then the name and the descriptor, each padded to 4 bytes.
    private void ReadNotes(ReadOnlySpan<byte> n)
    {
        while (n.Length >= 12)
        {
            uint namesz = BinaryPrimitives.ReadUInt32LittleEndian(n);
            uint descsz = BinaryPrimitives.ReadUInt32LittleEndian(n[4..]);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(n[8..]);
            ulong nameEnd = 12 + (((ulong)namesz + 3) & ~3ul);
            ulong descEnd = nameEnd + (((ulong)descsz + 3) & ~3ul);
            if (descEnd > (ulong)n.Length) return;
            var name = n.Slice(12, (int)namesz);
            var desc = n.Slice((int)nameEnd, (int)descsz);
            if (type == XenElfnotePhys32Entry && name.SequenceEqual("Xen\0"u8) && desc.Length >= 4)
                PvhEntry = desc.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(desc) : BinaryPrimitives.ReadUInt32LittleEndian(desc);
            n = n[(int)descEnd..];
        }
    }

    /// <summary>Loads every PT_LOAD at its physical address; returns the lowest and one-past-highest bytes used.</summary>
    public (ulong Start, ulong End) LoadInto(BootContext ctx)
    {
        ulong start = ulong.MaxValue, end = 0;
        foreach (var seg in Loads)
        {
            ctx.LoadSegment(seg.Paddr, ctx.Kernel.AsSpan((int)seg.Offset, (int)seg.FileSize), seg.MemSize, $"ELF segment at 0x{seg.Paddr:x}");
            start = Math.Min(start, seg.Paddr);
            end = Math.Max(end, seg.Paddr + seg.MemSize);
        }
        return (start, end);
    }

    /// <summary>
    /// The entry as a physical address: e_entry translated through the segment whose virtual range holds it (as GRUB
    /// does), so a kernel linked high but loaded low starts at the right byte; otherwise e_entry itself.
    /// </summary>
    public ulong PhysicalEntry()
    {
        foreach (var seg in Loads)
            if (Entry >= seg.Vaddr && Entry - seg.Vaddr < seg.MemSize) return Entry - seg.Vaddr + seg.Paddr;
        return Entry;
    }
}

/// <summary>ELF kernels without a Multiboot header: PVH when the Xen entry note is present, else plain ELF32/ELF64.</summary>
internal static class ElfLoader
{
    private const uint HvmStartMagic = 0x336ec578;
    private const int StartInfoSize = 0x38, ModlistEntrySize = 32;
    private const ulong ModlistAddress = KernelLoader.AuxAddress;
    private const ulong MemmapAddress = KernelLoader.AuxAddress + 0x100;
    private const int MaxMemmapEntries = 128;

    public static LoadedKernel Load(BootContext ctx)
    {
        var elf = ElfImage.Parse(ctx.Kernel, ctx);
        return elf.PvhEntry is ulong pvh ? LoadPvh(ctx, elf, pvh) : LoadPlain(ctx, elf);
    }

    private static LoadedKernel LoadPvh(BootContext ctx, ElfImage elf, ulong entry)
    {
        if (entry >= 1ul << 32) throw ctx.Fail($"PVH entry 0x{entry:x} is above 4 GiB");
        var (start, end) = elf.LoadInto(ctx);
        ctx.PlaceBootData();
        ctx.WriteCmdline(KernelLoader.MaxCmdline);
        ulong initrd = ctx.PlaceInitrd(end, 1ul << 32);

        // hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h), version 1 with the memory map.
        var si = ctx.Span(ctx.At(KernelLoader.InfoAddress), StartInfoSize, "hvm_start_info");
        si.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(si, HvmStartMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(si[4..], 1); // version
        BinaryPrimitives.WriteUInt32LittleEndian(si[8..], 0); // flags
        if (ctx.Initrd is not null)
        {
            var mod = ctx.Span(ctx.At(ModlistAddress), ModlistEntrySize, "PVH module list");
            mod.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(mod, initrd);
            BinaryPrimitives.WriteUInt64LittleEndian(mod[8..], (ulong)ctx.Initrd.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(si[0x0c..], 1); // nr_modules
            BinaryPrimitives.WriteUInt64LittleEndian(si[0x10..], ctx.At(ModlistAddress));
        }
        BinaryPrimitives.WriteUInt64LittleEndian(si[0x18..], ctx.At(KernelLoader.CmdlineAddress));
        BinaryPrimitives.WriteUInt64LittleEndian(si[0x20..], ctx.AcpiRsdp);
        int n = ctx.WriteMemmap24(ctx.Span(ctx.At(MemmapAddress), MaxMemmapEntries * 24, "PVH memory map"));
        BinaryPrimitives.WriteUInt64LittleEndian(si[0x28..], ctx.At(MemmapAddress));
        BinaryPrimitives.WriteUInt32LittleEndian(si[0x30..], (uint)n);

        // PVH (xen/include/public/arch-x86/hvm/start_info.h and Xen's pvh.pandoc): 32-bit flat protected mode,
        // paging off, CR4 zero, EBX = start_info, TR a 32-bit TSS with base 0 and limit 0x67.
        var cpu = BootCpuState.Flat32(ctx.Memory, entry, ctx.At(KernelLoader.GdtAddress), ctx.At(KernelLoader.StackTop));
        cpu.Tr = cpu.Tr with { Descriptor = cpu.Tr.Descriptor with { Base = 0 } };
        cpu[Reg.Rbx] = ctx.At(KernelLoader.InfoAddress);
        return new LoadedKernel(KernelFormat.Pvh, cpu, start, end, initrd, ctx.Initrd is null ? 0 : (ulong)ctx.Initrd.Length, ctx.At(KernelLoader.InfoAddress));
    }

    private static LoadedKernel LoadPlain(BootContext ctx, ElfImage elf)
    {
        // A plain ELF has no way to receive an initrd or a command line: refuse rather than silently drop them.
        if (ctx.Initrd is not null) throw ctx.Fail("a plain ELF kernel (no PVH note, no Multiboot header) cannot take an initrd");
        if (ctx.Cmdline.Length > 0) throw ctx.Fail("a plain ELF kernel (no PVH note, no Multiboot header) cannot take a command line");
        var (start, end) = elf.LoadInto(ctx);
        ctx.PlaceBootData();
        ulong entry = elf.PhysicalEntry();
        if (entry >= 1ul << 32) throw ctx.Fail($"entry point 0x{elf.Entry:x} is not in the identity-mapped first 4 GiB nor inside a loaded segment");
        var cpu = elf.Is64
            ? BootCpuState.Long64(ctx.Memory, entry, ctx.At(KernelLoader.PageTableAddress), ctx.At(KernelLoader.GdtAddress), ctx.At(KernelLoader.StackTop))
            : BootCpuState.Flat32(ctx.Memory, entry, ctx.At(KernelLoader.GdtAddress), ctx.At(KernelLoader.StackTop));
        return new LoadedKernel(elf.Is64 ? KernelFormat.Elf64 : KernelFormat.Elf32, cpu, start, end, 0, 0, 0);
    }
}
