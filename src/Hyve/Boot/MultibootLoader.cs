// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Vmm;
using Hyve.X86;

namespace Hyve.Boot;

/// <summary>Multiboot 1 and Multiboot 2 kernels (the GNU Multiboot specifications 0.6.96 and 2.0).</summary>
internal static class MultibootLoader
{
    public const uint Magic1 = 0x1BADB002, BootMagic1 = 0x2BADB002;
    public const uint Magic2 = 0xE85250D6, BootMagic2 = 0x36D76289;
    private const int Search1 = 8192, Search2 = 32768;
    private const string LoaderName = "hyve";

    // Multiboot 1 info layout and flags.
    private const int Info1Size = 116;
    private const uint MbiMemory = 1 << 0, MbiCmdline = 1 << 2, MbiMods = 1 << 3, MbiMmap = 1 << 6, MbiLoaderName = 1 << 9;
    private const ulong Mods1Address = KernelLoader.AuxAddress;              // one 16-byte module entry
    private const ulong LoaderNameAddress = KernelLoader.AuxAddress + 0x40;
    private const ulong ModString1Address = KernelLoader.AuxAddress + 0x100; // up to 0x700 bytes
    private const int ModStringMax = 0x6ff;
    private const ulong Mmap1Address = KernelLoader.AuxAddress + 0x800;      // 128 entries of 24 bytes
    private const int MaxMmapEntries = 128;
    private const int Info2Max = 0x10000;

    public readonly record struct HeaderSearch(bool Found, int Offset, bool BadChecksum);

    public static HeaderSearch FindHeader1(byte[] f)
    {
        bool bad = false;
        int limit = Math.Min(Search1, f.Length) - 12;
        for (int off = 0; off <= limit; off += 4)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(off)) != Magic1) continue;
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(off + 4));
            uint sum = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(off + 8));
            if (unchecked(Magic1 + flags + sum) == 0) return new HeaderSearch(true, off, false);
            bad = true;
        }
        return new HeaderSearch(false, 0, bad);
    }

    public static HeaderSearch FindHeader2(byte[] f)
    {
        bool bad = false;
        int limit = Math.Min(Search2, f.Length) - 16;
        for (int off = 0; off <= limit; off += 8)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(off)) != Magic2) continue;
            uint arch = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(off + 4));
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(off + 8));
            uint sum = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(off + 12));
            if (unchecked(Magic2 + arch + len + sum) == 0) return new HeaderSearch(true, off, false);
            bad = true;
        }
        return new HeaderSearch(false, 0, bad);
    }

    // ---- Multiboot 1 ----

    public static LoadedKernel Load1(BootContext ctx, int hdr)
    {
        var f = ctx.Kernel.AsSpan();
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(f[(hdr + 4)..]);
        // Bits 0-15 are requirements: 0 (page-aligned modules) and 1 (memory info) are met; 2 (video mode) is
        // accepted without video information, as QEMU does; anything else we cannot honour.
        if ((flags & 0xfff8) != 0) throw ctx.Fail($"Multiboot header requires features hyve lacks (flags 0x{flags:x8})");
        ulong start, end, entry;
        if ((flags & (1u << 16)) != 0)
        {
            if (hdr + 32 > f.Length) throw ctx.Fail("truncated Multiboot header");
            var a = f[(hdr + 12)..];
            (start, end) = LoadAout(ctx, hdr, BinaryPrimitives.ReadUInt32LittleEndian(a), BinaryPrimitives.ReadUInt32LittleEndian(a[4..]),
                BinaryPrimitives.ReadUInt32LittleEndian(a[8..]), BinaryPrimitives.ReadUInt32LittleEndian(a[12..]), loadFromStart: false);
            entry = BinaryPrimitives.ReadUInt32LittleEndian(a[16..]);
        }
        else
        {
            if (!ElfImage.IsElf(f)) throw ctx.Fail("Multiboot kernel is neither ELF nor has load addresses (flags bit 16)");
            var elf = ElfImage.Parse(ctx.Kernel, ctx);
            (start, end) = elf.LoadInto(ctx);
            entry = elf.PhysicalEntry();
        }
        CheckEntry(ctx, entry, start, end);
        ctx.PlaceBootData();

        ctx.WriteMultibootCmdline(KernelLoader.MaxCmdline);
        ulong initrd = ctx.PlaceInitrd(end, 1ul << 32);
        var info = ctx.Span(ctx.At(KernelLoader.InfoAddress), Info1Size, "Multiboot information");
        info.Clear();
        uint mbiFlags = MbiMemory | MbiCmdline | MbiMods | MbiMmap | MbiLoaderName;
        var (lower, upper) = ctx.BasicMemInfo();
        BinaryPrimitives.WriteUInt32LittleEndian(info[4..], lower);
        BinaryPrimitives.WriteUInt32LittleEndian(info[8..], upper);
        BinaryPrimitives.WriteUInt32LittleEndian(info[16..], (uint)ctx.At(KernelLoader.CmdlineAddress));
        if (ctx.Initrd is not null)
        {
            var mod = ctx.Span(ctx.At(Mods1Address), 16, "Multiboot module list");
            BinaryPrimitives.WriteUInt32LittleEndian(mod, (uint)initrd);
            BinaryPrimitives.WriteUInt32LittleEndian(mod[4..], (uint)(initrd + (ulong)ctx.Initrd.Length));
            BinaryPrimitives.WriteUInt32LittleEndian(mod[8..], (uint)ctx.At(ModString1Address));
            BinaryPrimitives.WriteUInt32LittleEndian(mod[12..], 0);
            ctx.Write(ctx.At(ModString1Address), ModuleString(ctx), "module string");
            BinaryPrimitives.WriteUInt32LittleEndian(info[20..], 1);
            BinaryPrimitives.WriteUInt32LittleEndian(info[24..], (uint)ctx.At(Mods1Address));
        }
        // mmap entries carry a size prefix that does not count itself (20).
        var mm = ctx.Span(ctx.At(Mmap1Address), MaxMmapEntries * 24, "Multiboot memory map");
        int n = 0;
        foreach (var e in ctx.E820.Entries)
        {
            if (n == MaxMmapEntries) break;
            var d = mm[(n * 24)..];
            BinaryPrimitives.WriteUInt32LittleEndian(d, 20);
            BinaryPrimitives.WriteUInt64LittleEndian(d[4..], e.Base);
            BinaryPrimitives.WriteUInt64LittleEndian(d[12..], e.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(d[20..], (uint)e.Type);
            n++;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(info[44..], (uint)(n * 24));
        BinaryPrimitives.WriteUInt32LittleEndian(info[48..], (uint)ctx.At(Mmap1Address));
        ctx.Write(ctx.At(LoaderNameAddress), Encoding.ASCII.GetBytes(LoaderName + "\0"), "boot loader name");
        BinaryPrimitives.WriteUInt32LittleEndian(info[64..], (uint)ctx.At(LoaderNameAddress));
        BinaryPrimitives.WriteUInt32LittleEndian(info, mbiFlags);

        // 32-bit protected mode, paging off, EAX = magic, EBX = info (A20 is always on in a VM).
        var cpu = BootCpuState.Flat32(ctx.Memory, entry, ctx.At(KernelLoader.GdtAddress), ctx.At(KernelLoader.StackTop));
        cpu[Reg.Rax] = BootMagic1;
        cpu[Reg.Rbx] = ctx.At(KernelLoader.InfoAddress);
        return new LoadedKernel(KernelFormat.Multiboot1, cpu, start, end, initrd, ctx.Initrd is null ? 0 : (ulong)ctx.Initrd.Length, ctx.At(KernelLoader.InfoAddress));
    }

    // The a.out kludge (Multiboot 1 flag 16, Multiboot 2 address tag): the file from the header's offset minus
    // (header_addr - load_addr) loads at load_addr up to load_end_addr (0: end of file), then zeroed to bss_end_addr.
    private static (ulong Start, ulong End) LoadAout(BootContext ctx, int hdr, uint headerAddr, uint loadAddr, uint loadEndAddr, uint bssEndAddr, bool loadFromStart)
    {
        long fileOff;
        if (loadFromStart) { fileOff = 0; }
        else
        {
            if (loadAddr > headerAddr) throw ctx.Fail($"Multiboot load_addr 0x{loadAddr:x} is above header_addr 0x{headerAddr:x}");
            fileOff = hdr - (long)(headerAddr - loadAddr);
            if (fileOff < 0) throw ctx.Fail("Multiboot header_addr/load_addr point before the start of the file");
        }
        long fileLen = ctx.Kernel.Length - fileOff;
        if (loadEndAddr != 0)
        {
            if (loadEndAddr < loadAddr) throw ctx.Fail($"Multiboot load_end_addr 0x{loadEndAddr:x} is below load_addr 0x{loadAddr:x}");
            if (loadEndAddr - loadAddr > fileLen)
                throw ctx.Fail($"truncated Multiboot kernel: it loads 0x{loadEndAddr - loadAddr:x} bytes but the file has 0x{fileLen:x} after the load offset");
            fileLen = loadEndAddr - loadAddr;
        }
        ulong memEnd = loadAddr + (ulong)fileLen;
        if (bssEndAddr != 0)
        {
            if (bssEndAddr < memEnd) throw ctx.Fail($"Multiboot bss_end_addr 0x{bssEndAddr:x} is below the loaded image's end 0x{memEnd:x}");
            memEnd = bssEndAddr;
        }
        ctx.LoadSegment(loadAddr, ctx.Kernel.AsSpan((int)fileOff, (int)fileLen), memEnd - loadAddr, "Multiboot kernel image");
        return (loadAddr, memEnd);
    }

    private static void CheckEntry(BootContext ctx, ulong entry, ulong start, ulong end)
    {
        if (entry < start || entry >= end) throw ctx.Fail($"entry point 0x{entry:x} lies outside the loaded image 0x{start:x}-0x{end:x}");
    }

    // The module's string: the initrd's file name, as GRUB would pass the module's path.
    private static byte[] ModuleString(BootContext ctx)
    {
        byte[] s = Encoding.UTF8.GetBytes(ctx.Initrd!.Name);
        var z = new byte[Math.Min(s.Length, ModStringMax) + 1];
        s.AsSpan(0, z.Length - 1).CopyTo(z);
        return z;
    }

    // ---- Multiboot 2 ----

    public static LoadedKernel Load2(BootContext ctx, int hdr)
    {
        var f = ctx.Kernel.AsSpan();
        uint arch = BinaryPrimitives.ReadUInt32LittleEndian(f[(hdr + 4)..]);
        uint hlen = BinaryPrimitives.ReadUInt32LittleEndian(f[(hdr + 8)..]);
        if (arch != 0) throw ctx.Fail($"Multiboot 2 header is for architecture {arch}, not i386 (0)");
        if (hlen < 24 || hlen > f.Length - hdr) throw ctx.Fail("truncated or corrupt Multiboot 2 header");
        var tags = f.Slice(hdr + 16, (int)hlen - 16);
        uint[]? address = null;
        uint? entryTag = null;
        int pos = 0;
        while (true)
        {
            if (pos + 8 > tags.Length) throw ctx.Fail("Multiboot 2 header has no end tag");
            ushort type = BinaryPrimitives.ReadUInt16LittleEndian(tags[pos..]);
            ushort tflags = BinaryPrimitives.ReadUInt16LittleEndian(tags[(pos + 2)..]);
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(tags[(pos + 4)..]);
            if (size < 8 || size > tags.Length - pos) throw ctx.Fail($"corrupt Multiboot 2 header tag {type} (size {size})");
            var body = tags.Slice(pos + 8, (int)size - 8);
            bool optional = (tflags & 1) != 0;
            switch (type)
            {
                case 0: break;
                case 1: // information request: fail only for tag types the specification does not define
                    for (int i = 0; i + 4 <= body.Length; i += 4)
                    {
                        uint want = BinaryPrimitives.ReadUInt32LittleEndian(body[i..]);
                        if (want > 21 && !optional) throw ctx.Fail($"Multiboot 2 kernel requires unknown information type {want}");
                    }
                    break;
                case 2:
                    if (body.Length < 16) throw ctx.Fail("corrupt Multiboot 2 address tag");
                    address = [BinaryPrimitives.ReadUInt32LittleEndian(body), BinaryPrimitives.ReadUInt32LittleEndian(body[4..]),
                        BinaryPrimitives.ReadUInt32LittleEndian(body[8..]), BinaryPrimitives.ReadUInt32LittleEndian(body[12..])];
                    break;
                case 3:
                    if (body.Length < 4) throw ctx.Fail("corrupt Multiboot 2 entry tag");
                    entryTag = BinaryPrimitives.ReadUInt32LittleEndian(body);
                    break;
                case 4 or 5 or 6 or 10: break; // console flags, framebuffer, module alignment (always page-aligned), relocatable
                case 8 or 9: break; // EFI entry points: hyve boots the i386 entry
                case 7:
                    if (!optional) throw ctx.Fail("Multiboot 2 kernel requires EFI boot services");
                    break;
                default:
                    if (!optional) throw ctx.Fail($"Multiboot 2 header has unknown required tag {type}");
                    break;
            }
            if (type == 0) break;
            pos += (int)((size + 7) & ~7u);
        }

        ulong start, end, entry;
        if (address is not null)
        {
            bool fromStart = address[1] == uint.MaxValue;
            (start, end) = LoadAout(ctx, hdr, address[0], fromStart ? address[0] - (uint)hdr : address[1], address[2], address[3], fromStart);
            entry = entryTag ?? throw ctx.Fail("Multiboot 2 address tag without an entry address tag");
        }
        else
        {
            if (!ElfImage.IsElf(f)) throw ctx.Fail("Multiboot 2 kernel is neither ELF nor has an address tag");
            var elf = ElfImage.Parse(ctx.Kernel, ctx);
            (start, end) = elf.LoadInto(ctx);
            entry = entryTag ?? elf.PhysicalEntry();
        }
        CheckEntry(ctx, entry, start, end);
        ctx.PlaceBootData();
        ulong initrd = ctx.PlaceInitrd(end, 1ul << 32);
        WriteInfo2(ctx, initrd);

        var cpu = BootCpuState.Flat32(ctx.Memory, entry, ctx.At(KernelLoader.GdtAddress), ctx.At(KernelLoader.StackTop));
        cpu[Reg.Rax] = BootMagic2;
        cpu[Reg.Rbx] = ctx.At(KernelLoader.Multiboot2InfoAddress);
        return new LoadedKernel(KernelFormat.Multiboot2, cpu, start, end, initrd, ctx.Initrd is null ? 0 : (ulong)ctx.Initrd.Length, ctx.At(KernelLoader.Multiboot2InfoAddress));
    }

    // Boot information: total_size, reserved, then 8-byte aligned tags ending with type 0.
    private static void WriteInfo2(BootContext ctx, ulong initrd)
    {
        var buf = ctx.Span(ctx.At(KernelLoader.Multiboot2InfoAddress), Info2Max, "Multiboot 2 information");
        buf.Clear();
        int pos = 8;
        byte[] cmdline = ctx.MultibootCmdlineBytes(KernelLoader.MaxCmdline);
        pos = Tag(buf, pos, 1, cmdline);
        pos = Tag(buf, pos, 2, Encoding.ASCII.GetBytes(LoaderName + "\0"));
        if (ctx.Initrd is not null)
        {
            byte[] name = ModuleString(ctx);
            var body = new byte[8 + name.Length];
            BinaryPrimitives.WriteUInt32LittleEndian(body, (uint)initrd);
            BinaryPrimitives.WriteUInt32LittleEndian(body.AsSpan(4), (uint)(initrd + (ulong)ctx.Initrd.Length));
            name.CopyTo(body, 8);
            pos = Tag(buf, pos, 3, body);
        }
        var (lower, upper) = ctx.BasicMemInfo();
        var mem = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(mem, lower);
        BinaryPrimitives.WriteUInt32LittleEndian(mem.AsSpan(4), upper);
        pos = Tag(buf, pos, 4, mem);
        var mmap = new byte[8 + MaxMmapEntries * 24];
        BinaryPrimitives.WriteUInt32LittleEndian(mmap, 24); // entry_size
        BinaryPrimitives.WriteUInt32LittleEndian(mmap.AsSpan(4), 0); // entry_version
        int n = ctx.WriteMemmap24(mmap.AsSpan(8));
        pos = Tag(buf, pos, 6, mmap.AsSpan(0, 8 + n * 24));
        if (ctx.AcpiRsdp != 0)
        {
            // A copy of the RSDP: revision 0 (20 bytes) as tag 14, revision 2 or later (36 bytes) as tag 15.
            if (!ctx.Memory.TryGetSpan(ctx.AcpiRsdp, 36, MemProt.Read, out var rsdp) || !rsdp[..8].SequenceEqual("RSD PTR "u8))
                throw new ArgumentException($"no ACPI RSDP at 0x{ctx.AcpiRsdp:x}: write the ACPI tables before loading a Multiboot 2 kernel");
            pos = rsdp[15] >= 2 ? Tag(buf, pos, 15, rsdp[..36]) : Tag(buf, pos, 14, rsdp[..20]);
        }
        pos = Tag(buf, pos, 0, []);
        BinaryPrimitives.WriteUInt32LittleEndian(buf, (uint)pos);
    }

    private static int Tag(Span<byte> buf, int pos, uint type, ReadOnlySpan<byte> body)
    {
        int size = 8 + body.Length;
        int next = pos + ((size + 7) & ~7);
        if (next > buf.Length) throw new HostConfigException("Multiboot 2 boot information is larger than 64 KiB");
        BinaryPrimitives.WriteUInt32LittleEndian(buf[pos..], type);
        BinaryPrimitives.WriteUInt32LittleEndian(buf[(pos + 4)..], (uint)size);
        body.CopyTo(buf[(pos + 8)..]);
        return next;
    }
}
