// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Vmm;

namespace Hyve.Boot;

/// <summary>The kernel image formats the direct-boot loader understands.</summary>
public enum KernelFormat
{
    /// <summary>Linux bzImage, boot protocol 2.06 or later.</summary>
    LinuxBzImage,
    /// <summary>ELF with a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).</summary>
    Pvh,
    /// <summary>Plain 32-bit ELF, entered in flat protected mode.</summary>
    Elf32,
    /// <summary>Plain 64-bit ELF, entered in long mode with only the first 4 GiB identity-mapped: an e_entry inside a
    /// segment's p_vaddr range is translated to its p_paddr, so a kernel linked high starts at its physical address and
    /// must build its own high mappings before touching high addresses.</summary>
    Elf64,
    /// <summary>Multiboot 1 (a.out kludge or ELF).</summary>
    Multiboot1,
    /// <summary>Multiboot 2 (address tag or ELF).</summary>
    Multiboot2,
}

/// <summary>What <see cref="KernelLoader.Load(GuestMemory, string, string?, string?, E820Map?, ulong)"/> did: the format found,
/// where things went, and vCPU 0's initial state (apply it with <see cref="BootCpuState.Apply"/>).</summary>
/// <param name="Format">The kernel's format.</param>
/// <param name="Cpu">vCPU 0's initial registers.</param>
/// <param name="KernelStart">Lowest guest-physical byte the kernel occupies.</param>
/// <param name="KernelEnd">One past the highest byte the kernel occupies (for Linux, load address + init_size).</param>
/// <param name="InitrdAddress">Where the initrd went (0 without one).</param>
/// <param name="InitrdSize">Initrd size in bytes (0 without one).</param>
/// <param name="InfoAddress">The boot information block handed to the kernel (boot_params, hvm_start_info, Multiboot info; 0 for plain ELF).</param>
public sealed record LoadedKernel(KernelFormat Format, BootCpuState Cpu, ulong KernelStart, ulong KernelEnd,
    ulong InitrdAddress, ulong InitrdSize, ulong InfoAddress);

/// <summary>
/// Direct kernel boot (bhyveload's job, done inside hyve): detects the kernel's format by its content, copies
/// kernel, initrd and command line into guest memory with the boot information its protocol expects, and
/// returns vCPU 0's entry state. Configured by keys boot.kernel, boot.initrd and boot.cmdline.
/// Anything unusable (unknown format, truncated or corrupt image, initrd or command line that does not fit,
/// kernel larger than guest memory) is a <see cref="HostConfigException"/> with a one-line reason.
/// </summary>
/// <remarks>
/// Fixed low-memory layout shared by every format (all below the 1 MiB where kernels load):
/// GDT and TSS at 0x500, long-mode page tables at 0x1000-0x6FFF, the boot information block at 0x7000,
/// a boot stack below 0x9000, memory maps, module lists and strings at 0x9000-0xFFFF, the Multiboot 2
/// information at 0x10000, the command line at 0x20000. An ELF or Multiboot kernel that loads anywhere in that block
/// (low memory the guest owns) moves the whole block, same layout, to the lowest page-aligned RAM below 4 GiB that the
/// kernel does not occupy (<see cref="BootContext.PlaceBootData"/>); the E820 map is unchanged and the block only ever lies
/// in ranges it reports as RAM.
/// The initrd goes as high as possible in RAM below 4 GiB (and below the kernel's initrd_addr_max), above the kernel.
/// </remarks>
public static class KernelLoader
{
    /// <summary>GDT (and TSS) address.</summary>
    public const ulong GdtAddress = 0x500;
    /// <summary>Long-mode identity page tables (PML4, PDPT, 4 page directories).</summary>
    public const ulong PageTableAddress = 0x1000;
    /// <summary>Boot information block: Linux zero page, PVH hvm_start_info, Multiboot 1 info.</summary>
    public const ulong InfoAddress = 0x7000;
    /// <summary>Top of the boot stack (a fake zero return address sits just below).</summary>
    public const ulong StackTop = 0x9000;
    /// <summary>Auxiliary area: memory maps, module lists, strings.</summary>
    public const ulong AuxAddress = 0x9000;
    /// <summary>Multiboot 2 boot information.</summary>
    public const ulong Multiboot2InfoAddress = 0x10000;
    /// <summary>Kernel command line.</summary>
    public const ulong CmdlineAddress = 0x20000;
    /// <summary>Longest command line accepted by any format, excluding the terminating NUL.</summary>
    public const int MaxCmdline = 0x8000 - 1;
    /// <summary>End of the loader's boot data in the fixed layout (the block is [0, BootDataEnd) plus its relocation).</summary>
    public const ulong BootDataEnd = 0x30000;
    /// <summary>Largest kernel or initrd file read (2 GiB minus a page).</summary>
    public const long MaxFileSize = int.MaxValue - 4095;

    /// <summary>
    /// Loads <paramref name="kernelPath"/> (and <paramref name="initrdPath"/>, <paramref name="cmdline"/>) into
    /// <paramref name="memory"/>. <paramref name="e820"/> is the memory map to report and obey (built from the memory
    /// when null); <paramref name="acpiRsdp"/> is the ACPI RSDP address to pass on (0: none; the RSDP must already be
    /// in memory for Multiboot 2, which copies it).
    /// </summary>
    public static LoadedKernel Load(GuestMemory memory, string kernelPath, string? initrdPath, string? cmdline,
        E820Map? e820 = null, ulong acpiRsdp = 0)
    {
        byte[] kernel = ReadKernel(kernelPath);
        InitrdSource? initrd = initrdPath is null ? null : InitrdSource.FromFile(initrdPath);
        return Load(memory, kernel, Path.GetFileName(kernelPath), kernelPath, initrd, cmdline, e820, acpiRsdp);
    }

    /// <summary>Loads a kernel (and initrd) given as bytes; otherwise as the file overload.</summary>
    public static LoadedKernel Load(GuestMemory memory, byte[] kernel, byte[]? initrd, string? cmdline,
        E820Map? e820 = null, ulong acpiRsdp = 0, string kernelName = "image", string initrdName = "initrd")
    {
        if (kernel.Length == 0) throw new HostConfigException($"kernel {kernelName} is empty");
        InitrdSource? source = null;
        if (initrd is not null)
        {
            if (initrd.Length == 0) throw new HostConfigException($"initrd {initrdName} is empty");
            source = new InitrdSource(initrdName, initrd.Length, span => initrd.CopyTo(span));
        }
        return Load(memory, kernel, kernelName, kernelName, source, cmdline, e820, acpiRsdp);
    }

    private static LoadedKernel Load(GuestMemory memory, byte[] kernel, string kernelName, string kernelPath, InitrdSource? initrd,
        string? cmdline, E820Map? e820, ulong acpiRsdp)
    {
        var ctx = new BootContext(memory, e820 ?? E820Map.FromMemory(memory), kernel, kernelName, initrd, cmdline ?? "", acpiRsdp)
        {
            KernelPath = kernelPath,
        };
        if (kernel.Length > 0x206 && BinaryPrimitives.ReadUInt32LittleEndian(kernel.AsSpan(0x202)) == LinuxLoader.HdrS)
            return LinuxLoader.Load(ctx);
        var mb2 = MultibootLoader.FindHeader2(kernel);
        if (mb2.Found) return MultibootLoader.Load2(ctx, mb2.Offset);
        var mb1 = MultibootLoader.FindHeader1(kernel);
        if (mb1.Found) return MultibootLoader.Load1(ctx, mb1.Offset);
        if (ElfImage.IsElf(kernel)) return ElfLoader.Load(ctx);
        if (mb1.BadChecksum || mb2.BadChecksum)
            throw new HostConfigException($"kernel {kernelName}: its Multiboot header has a wrong checksum");
        throw new HostConfigException($"kernel {kernelName}: unrecognised format (not a Linux bzImage, ELF, Multiboot 1 or Multiboot 2 image)");
    }

    private static byte[] ReadKernel(string path)
    {
        try
        {
            if (!File.Exists(path)) throw new HostConfigException($"kernel {path} does not exist");
            using var f = File.OpenHandle(path); // through a symlink (Debian's /vmlinuz is one), unlike FileInfo.Length
            long length = RandomAccess.GetLength(f);
            if (length == 0) throw new HostConfigException($"kernel {path} is empty");
            if (length > MaxFileSize) throw new HostConfigException($"kernel {path} is larger than 2 GiB");
            var bytes = new byte[length];
            if (RandomAccess.Read(f, bytes, 0) != length) throw new HostConfigException($"kernel {path} changed while it was read");
            return bytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new HostConfigException($"cannot read kernel {path}: {e.Message}");
        }
    }
}

/// <summary>An initrd to copy into guest memory once its place is known (files are read straight into guest memory).</summary>
internal sealed class InitrdSource(string name, long length, Action<Span<byte>> fill)
{
    public string Name { get; } = name;
    public long Length { get; } = length;
    public void CopyTo(Span<byte> dest) => fill(dest);

    public static InitrdSource FromFile(string path)
    {
        long length;
        try
        {
            // The length of what the path names, through any symlink (Debian's /initrd.img is one): FileInfo.Length
            // would give the link's own length for a symlink.
            if (!File.Exists(path)) throw new HostConfigException($"initrd {path} does not exist");
            using var f = File.OpenHandle(path);
            length = RandomAccess.GetLength(f);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new HostConfigException($"cannot read initrd {path}: {e.Message}");
        }
        if (length == 0) throw new HostConfigException($"initrd {path} is empty");
        if (length > KernelLoader.MaxFileSize) throw new HostConfigException($"initrd {path} is larger than 2 GiB");
        return new InitrdSource(Path.GetFileName(path), length, span =>
        {
            try
            {
                using var f = File.OpenRead(path);
                f.ReadExactly(span);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new HostConfigException($"cannot read initrd {path}: {e.Message}");
            }
        });
    }
}

/// <summary>Everything one load needs, with bounds-checked guest-memory helpers.</summary>
internal sealed class BootContext(GuestMemory memory, E820Map e820, byte[] kernel, string kernelName, InitrdSource? initrd, string cmdline, ulong acpiRsdp)
{
    public GuestMemory Memory { get; } = memory;
    public E820Map E820 { get; } = e820;
    public byte[] Kernel { get; } = kernel;
    public string KernelName { get; } = kernelName;
    public InitrdSource? Initrd { get; } = initrd;
    public string Cmdline { get; } = cmdline;
    public ulong AcpiRsdp { get; } = acpiRsdp;
    /// <summary>The kernel's path as the user gave it (boot.kernel), which a Multiboot command line begins with.</summary>
    public string KernelPath { get; init; } = kernelName;

    /// <summary>A one-line refusal naming the kernel.</summary>
    public HostConfigException Fail(string why) => new($"kernel {KernelName}: {why}");

    /// <summary>The command line as bytes with its NUL, checked against <paramref name="limit"/> (excluding the NUL).</summary>
    public byte[] CmdlineBytes(int limit) => CmdlineBytes(Cmdline, limit);

    /// <summary>A Multiboot command line: the kernel's path, then the user's arguments, as GRUB and QEMU pass it (kernels
    /// that parse their arguments skip the first word).</summary>
    public byte[] MultibootCmdlineBytes(int limit) => CmdlineBytes(Cmdline.Length == 0 ? KernelPath : KernelPath + " " + Cmdline, limit);

    private byte[] CmdlineBytes(string line, int limit)
    {
        if (line.Contains('\0')) throw new HostConfigException("boot.cmdline contains a NUL character");
        byte[] text = Encoding.UTF8.GetBytes(line);
        limit = Math.Min(limit, KernelLoader.MaxCmdline);
        if (text.Length > limit)
            throw new HostConfigException($"boot.cmdline is {text.Length} bytes; kernel {KernelName} accepts at most {limit}");
        var z = new byte[text.Length + 1];
        text.CopyTo(z, 0);
        return z;
    }

    /// <summary>Writes the command line at <see cref="KernelLoader.CmdlineAddress"/> (relocated).</summary>
    public void WriteCmdline(int limit) => Write(At(KernelLoader.CmdlineAddress), CmdlineBytes(limit), "command line");

    /// <summary>Writes the Multiboot command line (path first) at <see cref="KernelLoader.CmdlineAddress"/> (relocated).</summary>
    public void WriteMultibootCmdline(int limit) => Write(At(KernelLoader.CmdlineAddress), MultibootCmdlineBytes(limit), "command line");

    /// <summary>How far the boot data block moved from its fixed layout: 0 unless the kernel loads over [0, BootDataEnd).</summary>
    public ulong DataBase { get; private set; }

    /// <summary>The address of a fixed-layout boot data item (a KernelLoader constant) after relocation.</summary>
    public ulong At(ulong fixedAddress) => fixedAddress + DataBase;

    private readonly List<(ulong Start, ulong End)> _kernelRanges = new();

    /// <summary>
    /// Called once the kernel is in memory and before any boot data is written: keeps the fixed layout when the kernel
    /// left [0, <see cref="KernelLoader.BootDataEnd"/>) alone, otherwise moves the block to the lowest page-aligned base
    /// whose whole block lies in E820 RAM below 4 GiB (outside the PCI hole) and clear of every kernel segment.
    /// </summary>
    public void PlaceBootData()
    {
        var candidates = new List<ulong> { 0 };
        foreach (var r in _kernelRanges) candidates.Add((r.End + 0xfff) & ~0xffful);
        foreach (var e in E820.Entries) if (e.Type == E820Type.Ram) candidates.Add((e.Base + 0xfff) & ~0xffful);
        candidates.Sort();
        const ulong size = KernelLoader.BootDataEnd;
        foreach (ulong c in candidates)
        {
            if (c + size > GuestMemory.LowMemLimit || !E820.IsRam(c, size)) continue;
            bool clear = true;
            foreach (var r in _kernelRanges) if (r.Start < c + size && c < r.End) { clear = false; break; }
            if (!clear) continue;
            DataBase = c;
            return;
        }
        throw Fail($"no room for the loader's boot data (0x{size:x} bytes) in guest RAM below 3 GiB outside the kernel");
    }

    /// <summary>Host span for a range of guest RAM (boot data: small, inside lowmem).</summary>
    public Span<byte> Span(ulong gpa, int length, string what)
    {
        if (!Memory.TryGetSpan(gpa, length, MemProt.Write, out var span))
            throw new HostConfigException($"{what} at 0x{gpa:x} ({length} bytes) does not fit in guest memory");
        return span;
    }

    /// <summary>Copies bytes to guest RAM.</summary>
    public void Write(ulong gpa, ReadOnlySpan<byte> data, string what) => data.CopyTo(Span(gpa, data.Length, what));

    /// <summary>Checks that a kernel part lies in usable RAM below 4 GiB and records it for <see cref="PlaceBootData"/>.</summary>
    public void CheckKernelRange(ulong gpa, ulong length, string what)
    {
        if (length == 0) return;
        if (gpa + length < gpa || gpa + length > 1ul << 32)
            throw Fail($"{what} at 0x{gpa:x} ({length} bytes) does not lie below 4 GiB");
        ulong end = gpa + length;
        if (end > GuestMemory.LowMemLimit && gpa < 1ul << 32)
            throw Fail($"{what} at 0x{gpa:x}-0x{end - 1:x} falls in the PCI hole between 3 GiB and 4 GiB, where no guest RAM can be");
        if (!E820.IsRam(gpa, length))
            throw Fail($"{what} at 0x{gpa:x}-0x{end - 1:x} is not in guest RAM ({Memory.Size >> 20} MiB): the kernel needs more memory than given");
        _kernelRanges.Add((gpa, end));
    }

    /// <summary>Copies <paramref name="data"/> to <paramref name="gpa"/> and zeroes up to <paramref name="memSize"/> (a loadable segment).</summary>
    public void LoadSegment(ulong gpa, ReadOnlySpan<byte> data, ulong memSize, string what)
    {
        CheckKernelRange(gpa, memSize, what);
        if (data.Length > 0) Write(gpa, data, what);
        ulong done = (ulong)data.Length;
        while (done < memSize)
        {
            int chunk = (int)Math.Min(memSize - done, 1u << 30);
            Span(gpa + done, chunk, what).Clear();
            done += (ulong)chunk;
        }
    }

    /// <summary>
    /// Places the initrd (if any) page-aligned as high as possible in RAM below <paramref name="ceiling"/> and at or
    /// above <paramref name="floor"/>, copies it, and returns its address (0 without an initrd).
    /// </summary>
    public ulong PlaceInitrd(ulong floor, ulong ceiling)
    {
        if (Initrd is null) return 0;
        ulong size = (ulong)Initrd.Length;
        floor = Math.Max((floor + 0xfff) & ~0xffful, DataBase + KernelLoader.BootDataEnd);
        ceiling = Math.Min(ceiling, 1ul << 32);
        var entries = E820.Entries;
        for (int i = entries.Count - 1; i >= 0; i--)
        {
            var e = entries[i];
            if (e.Type != E820Type.Ram) continue;
            ulong top = Math.Min(e.End, ceiling);
            if (top < size) continue;
            ulong addr = (top - size) & ~0xffful;
            if (addr < e.Base || addr < floor) continue;
            Initrd.CopyTo(Span(addr, (int)size, "initrd"));
            return addr;
        }
        throw new HostConfigException($"initrd {Initrd.Name} ({size} bytes) does not fit in guest RAM between the kernel's end 0x{floor:x} and 0x{ceiling:x}");
    }

    /// <summary>Writes the E820 map as hvm_memmap_table_entry / Multiboot 2 mmap entries (base, length, type, reserved: 24 bytes).</summary>
    public int WriteMemmap24(Span<byte> dest)
    {
        int n = 0;
        foreach (var e in E820.Entries)
        {
            if ((n + 1) * 24 > dest.Length) break;
            var d = dest[(n * 24)..];
            BinaryPrimitives.WriteUInt64LittleEndian(d, e.Base);
            BinaryPrimitives.WriteUInt64LittleEndian(d[8..], e.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(d[16..], (uint)e.Type);
            BinaryPrimitives.WriteUInt32LittleEndian(d[20..], 0);
            n++;
        }
        return n;
    }

    /// <summary>Kilobytes of RAM below 640 KiB and from 1 MiB up to the first hole (Multiboot mem_lower/mem_upper).</summary>
    public (uint Lower, uint Upper) BasicMemInfo()
    {
        ulong lower = 0, upper = 0;
        foreach (var e in E820.Entries)
        {
            if (e.Type != E820Type.Ram) continue;
            if (e.Base == 0) lower = Math.Min(e.End, E820Map.ConventionalEnd);
            if (e.Base <= E820Map.HighStart && e.End > E820Map.HighStart) upper = e.End - E820Map.HighStart;
        }
        return ((uint)(lower >> 10), (uint)Math.Min(upper >> 10, uint.MaxValue));
    }
}
