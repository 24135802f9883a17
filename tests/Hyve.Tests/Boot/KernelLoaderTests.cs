// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.Boot;
using Hyve.Vmm;
using Hyve.X86;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Boot;

public class KernelLoaderTests
{
    /// <summary>A minimal bzImage: one setup sector, the setup header, then <paramref name="pm"/> as the protected-mode kernel.</summary>
    internal static byte[] BzImage(byte[] pm, bool kernel64, ushort version = 0x20f, uint initSize = 0x100000,
        uint cmdlineSize = 2047, bool relocatable = true, ulong prefAddress = 0x1000000, uint? sysSize = null, uint code32Start = 0x100000)
    {
        var f = new byte[1024 + pm.Length];
        var s = f.AsSpan();
        s[0x1f1] = 1;                                                                  // setup_sects
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x1f4..], sysSize ?? (uint)((pm.Length + 15) / 16));
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x1fe..], 0xaa55);
        s[0x200] = 0xeb; s[0x201] = 0x6a;                                              // jmp to 0x26c: header ends there
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x202..], 0x53726448);              // "HdrS"
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x206..], version);
        s[0x211] = 0x01;                                                               // LOADED_HIGH
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x214..], code32Start);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x22c..], 0x7fffffff);              // initrd_addr_max
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x230..], 0x200000);                // kernel_alignment
        s[0x234] = relocatable ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt16LittleEndian(s[0x236..], (ushort)(kernel64 ? 3 : 0)); // XLF_KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x238..], cmdlineSize);
        BinaryPrimitives.WriteUInt64LittleEndian(s[0x258..], prefAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(s[0x260..], initSize);
        pm.CopyTo(s[1024..]);
        return f;
    }

    private static byte[] Span(GuestMemory m, ulong gpa, int len)
    {
        Assert.True(m.TryGetSpan(gpa, len, MemProt.Read, out var s));
        return s.ToArray();
    }

    [Fact]
    public void BzImageZeroPageCarriesHeaderCmdlineInitrdAndE820()
    {
        using var mem = new GuestMemory(64 << 20);
        var pm = new byte[0x3000];
        pm[0] = 0xf4;
        var image = BzImage(pm, kernel64: true);
        var k = KernelLoader.Load(mem, image, new byte[0x1800], "console=ttyS0", acpiRsdp: 0xf5a40);

        Assert.Equal(KernelFormat.LinuxBzImage, k.Format);
        Assert.Equal(0x1000000ul, k.KernelStart);                     // pref_address
        Assert.Equal(0x1100000ul, k.KernelEnd);                       // + init_size
        Assert.Equal(pm, Span(mem, 0x1000000, pm.Length));
        var bp = Span(mem, KernelLoader.InfoAddress, 4096);
        Assert.Equal(image.AsSpan(0x1f1, 0x202 - 0x1f1).ToArray(), bp.AsSpan(0x1f1, 0x202 - 0x1f1).ToArray());
        Assert.Equal(0x53726448u, BinaryPrimitives.ReadUInt32LittleEndian(bp.AsSpan(0x202)));
        Assert.Equal(0xff, bp[0x210]);                                // type_of_loader
        Assert.Equal(0x81, bp[0x211]);                                // LOADED_HIGH | CAN_USE_HEAP
        Assert.Equal(0x1000000u, BinaryPrimitives.ReadUInt32LittleEndian(bp.AsSpan(0x214)));
        uint cmdPtr = BinaryPrimitives.ReadUInt32LittleEndian(bp.AsSpan(0x228));
        Assert.Equal("console=ttyS0\0", Encoding.ASCII.GetString(Span(mem, cmdPtr, 14)));
        uint rd = BinaryPrimitives.ReadUInt32LittleEndian(bp.AsSpan(0x218));
        Assert.Equal((uint)k.InitrdAddress, rd);
        Assert.Equal(0x1800u, BinaryPrimitives.ReadUInt32LittleEndian(bp.AsSpan(0x21c)));
        Assert.Equal((64ul << 20) - 0x2000, k.InitrdAddress);         // highest page-aligned spot below the top
        Assert.Equal(0xf5a40ul, BinaryPrimitives.ReadUInt64LittleEndian(bp.AsSpan(0x70)));
        Assert.Equal(4, bp[0x1e8]);
        Assert.Equal(0x100000ul, BinaryPrimitives.ReadUInt64LittleEndian(bp.AsSpan(0x2d0 + 3 * 20)));
        Assert.Equal((64ul << 20) - 0x100000, BinaryPrimitives.ReadUInt64LittleEndian(bp.AsSpan(0x2d0 + 3 * 20 + 8)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(bp.AsSpan(0x2d0 + 3 * 20 + 16)));

        Assert.Equal(0x1000200ul, k.Cpu.Rip);                         // startup_64
        Assert.Equal(KernelLoader.InfoAddress, k.Cpu[Reg.Rsi]);
        Assert.True(k.Cpu.Cs.Descriptor.Long);
        Assert.Equal(0x10, k.Cpu.Cs.Selector);
        Assert.Equal(0x18, k.Cpu.Ds.Selector);
    }

    [Fact]
    public void BzImageWithout64BitEntryStartsAtCode32WithZeroedRegisters()
    {
        using var mem = new GuestMemory(64 << 20);
        var k = KernelLoader.Load(mem, BzImage(new byte[512], kernel64: false), null, null);
        Assert.Equal(0x1000000ul, k.Cpu.Rip);
        Assert.Equal(KernelLoader.InfoAddress, k.Cpu[Reg.Rsi]);
        Assert.Equal(0ul, k.Cpu[Reg.Rbp] | k.Cpu[Reg.Rdi] | k.Cpu[Reg.Rbx]);
        Assert.Equal(0ul, k.Cpu.Cr0 & BootCpuState.Cr0Pg);
        Assert.Equal(0xc09bu, k.Cpu.Cs.Descriptor.Access);
        Assert.Equal(0ul, k.InitrdAddress);
    }

    [Fact]
    public void RelocatableKernelMovesDownWhenPrefAddressIsBeyondMemory()
    {
        using var mem = new GuestMemory(16 << 20);
        var k = KernelLoader.Load(mem, BzImage(new byte[512], kernel64: true, prefAddress: 0x1000000), null, null);
        Assert.Equal(0x200000ul, k.KernelStart); // 1 MiB rounded up to kernel_alignment
    }

    public static IEnumerable<object[]> BadInputs()
    {
        var ok = BzImage(new byte[0x2000], kernel64: true);
        yield return ["truncated bzImage", ok[..0x1800], null!, null!, 64, "truncated"];
        yield return ["old boot protocol", BzImage(new byte[512], true, version: 0x204), null!, null!, 64, "too old"];
        yield return ["long command line", BzImage(new byte[512], true, cmdlineSize: 16), null!, new string('x', 17), 64, "at most 16"];
        yield return ["kernel larger than memory", BzImage(new byte[512], true, initSize: 64 << 20, relocatable: false), null!, null!, 32, "more memory"];
        yield return ["initrd larger than memory", ok, new byte[40 << 20], null!, 32, "does not fit"];
        yield return ["unknown format", Encoding.ASCII.GetBytes(new string('?', 4096)), null!, null!, 32, "unrecognised format"];
        yield return ["bad multiboot checksum", BootKit.Dwords(0x1BADB002, 0x10000, 0), null!, null!, 32, "checksum"];
        yield return ["multiboot feature hyve lacks", BootKit.Dwords(0x1BADB002, 0x10008, unchecked(0u - 0x1BADB002u - 0x10008u), 0, 0, 0, 0, 0), null!, null!, 32, "requires features"];
        var elf = BootKit.Elf(false, 0x100000, 0x100000, new byte[64], 0x100000);
        yield return ["truncated ELF", elf[..60], null!, null!, 32, "truncated"];
        yield return ["ELF beyond memory", BootKit.Elf(false, 0x4000000, 0x4000000, new byte[64], 0x4000000), null!, null!, 32, "more memory"];
        // issue 18 #8: a segment in the 3-4 GiB hole says so (it once said the kernel needed more memory).
        yield return ["ELF in the PCI hole", BootKit.Elf(false, 0xc8000000, 0xc8000000, new byte[64], 0xc8000000), null!, null!, 32, "PCI hole between 3 GiB and 4 GiB"];
        yield return ["fixed bzImage over the boot data", BzImage(new byte[512], true, relocatable: false, code32Start: 0x10000), null!, null!, 32, "boot data"];
        var bigBss = BootKit.Elf(true, 0x100000, 0x100000, new byte[64], 0x100000, bss: 1ul << 40);
        yield return ["ELF with huge bss", bigBss, null!, null!, 32, "below 4 GiB"];
    }

    // Not enumerated at discovery: xunit would serialize every row into the test case's id, and the 40 MiB initrd
    // alone becomes gigabytes of text in the test host.
    [Theory]
    [MemberData(nameof(BadInputs), DisableDiscoveryEnumeration = true)]
    public void BadInputIsRefusedWithOneLine(string what, byte[] kernel, byte[]? initrd, string? cmdline, int memMiB, string expected)
    {
        using var mem = new GuestMemory((ulong)memMiB << 20);
        var e = Assert.Throws<HostConfigException>(() => KernelLoader.Load(mem, kernel, initrd, cmdline));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.False(string.IsNullOrEmpty(what));
    }

    /// <summary>
    /// Issue 17 item 6: a Multiboot ELF loading at 0x8000, inside the loader's fixed boot data block, loads; the block
    /// (GDT, stack, Multiboot information, command line, memory map) moves to the first page above the kernel, the kernel's
    /// bytes are left intact, and the memory map still reports the reserved ranges.
    /// </summary>
    [Fact]
    public void MultibootElfInLowMemoryLoadsAndTheBootDataMovesOutOfItsWay()
    {
        using var mem = new GuestMemory(32 << 20);
        var code = new byte[0x20000]; // 0x8000-0x27fff
        for (int i = 0; i < code.Length; i++) code[i] = (byte)(i * 7 + 1);
        BootKit.Dwords(0x1BADB002, 0x3, unchecked(0u - 0x1BADB002u - 3u)).CopyTo(code, 0);
        var k = KernelLoader.Load(mem, BootKit.Elf(false, 0x8000, 0x8000, code, 0x8010), null, "x");
        Assert.Equal(KernelFormat.Multiboot1, k.Format);
        Assert.Equal(0x8010ul, k.Cpu.Rip);
        Assert.Equal(code, Span(mem, 0x8000, code.Length));
        const ulong moved = 0x28000;
        Assert.Equal(moved + KernelLoader.InfoAddress, k.Cpu[Reg.Rbx]);
        Assert.Equal(moved + KernelLoader.InfoAddress, k.InfoAddress);
        Assert.Equal(moved + KernelLoader.GdtAddress, k.Cpu.Gdtr.Base);
        Assert.InRange(k.Cpu[Reg.Rsp], moved + 0x8000, moved + KernelLoader.StackTop);
        var info = Span(mem, k.Cpu[Reg.Rbx], 116);
        uint cmd = BinaryPrimitives.ReadUInt32LittleEndian(info.AsSpan(16));
        Assert.Equal(moved + KernelLoader.CmdlineAddress, cmd);
        Assert.Equal("image x\0"u8.ToArray(), Span(mem, cmd, 8));
        uint mmapLen = BinaryPrimitives.ReadUInt32LittleEndian(info.AsSpan(44)), mmapAt = BinaryPrimitives.ReadUInt32LittleEndian(info.AsSpan(48));
        Assert.InRange(mmapAt, moved, moved + KernelLoader.BootDataEnd - 1);
        var mm = Span(mem, mmapAt, (int)mmapLen);
        var entries = Enumerable.Range(0, (int)mmapLen / 24).Select(n => (Base: BinaryPrimitives.ReadUInt64LittleEndian(mm.AsSpan(n * 24 + 4)),
            Type: BinaryPrimitives.ReadUInt32LittleEndian(mm.AsSpan(n * 24 + 20)))).ToList();
        Assert.Contains((0ul, 1u), entries);                      // RAM from 0, as before
        Assert.Contains((E820Map.EbdaStart, 2u), entries);         // the EBDA and BIOS area still reserved
        Assert.Contains((E820Map.BiosStart, 2u), entries);
    }

    /// <summary>A plain 64-bit ELF over the page-table area: the identity page tables move too, and CR3 follows them.</summary>
    [Fact]
    public void Elf64AtThePageTableAreaLoadsWithPageTablesMoved()
    {
        using var mem = new GuestMemory(32 << 20);
        var code = new byte[0x3000];
        code.AsSpan().Fill(0xf4);
        var k = KernelLoader.Load(mem, BootKit.Elf(true, 0x1000, 0x1000, code, 0x1000), null, null);
        Assert.Equal(code, Span(mem, 0x1000, code.Length));
        ulong cr3 = k.Cpu.Cr3;
        Assert.Equal(0x4000ul + KernelLoader.PageTableAddress, cr3);
        Assert.Equal((cr3 + 0x1000) | 3, BinaryPrimitives.ReadUInt64LittleEndian(Span(mem, cr3, 8)));
    }

    [Fact]
    public void MultibootHeaderInsideElfLoadsTheElf()
    {
        using var mem = new GuestMemory(32 << 20);
        var code = new byte[64];
        BootKit.Dwords(0x1BADB002, 0x3, unchecked(0u - 0x1BADB002u - 3u)).CopyTo(code, 0);
        var k = KernelLoader.Load(mem, BootKit.Elf(false, 0xc0100000, 0x100000, code, 0xc0100010), null, "x");
        Assert.Equal(KernelFormat.Multiboot1, k.Format);
        Assert.Equal(0x100010ul, k.Cpu.Rip); // e_entry through the segment's virtual-to-physical offset
        Assert.Equal(0x2BADB002ul, k.Cpu[Reg.Rax]);
        Assert.Equal(KernelLoader.InfoAddress, k.Cpu[Reg.Rbx]);
        Assert.Equal(code, Span(mem, 0x100000, 64));
    }

    [Fact]
    public void Multiboot2PassesACopyOfTheRsdp()
    {
        using var mem = new GuestMemory(32 << 20);
        var rsdp = new byte[36];
        "RSD PTR "u8.CopyTo(rsdp);
        rsdp[15] = 2;
        rsdp[20] = 36;
        Assert.True(mem.TryGetSpan(0xf5000, 36, MemProt.Write, out var at));
        rsdp.CopyTo(at);
        var header = BootKit.Dwords(0xE85250D6, 0, 16 + 24 + 16 + 8, unchecked(0u - 0xE85250D6u - 64u),
            2, 24, 0x100000, 0x100000, 0, 0, 3, 12, 0x100040, 0, 0, 8);
        var kernel = header.Concat(new byte[64]).ToArray();
        var k = KernelLoader.Load(mem, kernel, null, "mb2", acpiRsdp: 0xf5000);
        Assert.Equal(KernelFormat.Multiboot2, k.Format);
        Assert.Equal(0x36D76289ul, k.Cpu[Reg.Rax]);
        var info = Span(mem, k.InfoAddress, 4096);
        uint total = BinaryPrimitives.ReadUInt32LittleEndian(info);
        var types = new List<uint>();
        for (int pos = 8; pos < total;)
        {
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(info.AsSpan(pos)), size = BinaryPrimitives.ReadUInt32LittleEndian(info.AsSpan(pos + 4));
            types.Add(type);
            if (type == 15)
            {
                Assert.Equal(8u + 36, size);
                Assert.Equal(rsdp, info.AsSpan(pos + 8, 36).ToArray());
            }
            pos += (int)((size + 7) & ~7u);
        }
        Assert.Equal(new uint[] { 1, 2, 4, 6, 15, 0 }, types);
    }

    [Fact]
    public void MissingFilesAreRefused()
    {
        using var mem = new GuestMemory(16 << 20);
        var e = Assert.Throws<HostConfigException>(() => KernelLoader.Load(mem, "/nonexistent/vmlinuz", null, null));
        Assert.Contains("does not exist", e.Message);
        string k = Path.GetTempFileName();
        try
        {
            File.WriteAllBytes(k, BzImage(new byte[512], true));
            e = Assert.Throws<HostConfigException>(() => KernelLoader.Load(mem, k, "/nonexistent/initrd", null));
            Assert.Contains("initrd /nonexistent/initrd does not exist", e.Message);
        }
        finally { File.Delete(k); }
    }

    [Fact]
    public void InitrdFileIsReadIntoGuestMemory()
    {
        using var mem = new GuestMemory(64 << 20);
        string k = Path.GetTempFileName(), rd = Path.GetTempFileName();
        try
        {
            File.WriteAllBytes(k, BzImage(new byte[512], true));
            File.WriteAllBytes(rd, Encoding.ASCII.GetBytes("070701 initramfs"));
            var loaded = KernelLoader.Load(mem, k, rd, "quiet");
            Assert.Equal("070701 initramfs", Encoding.ASCII.GetString(Span(mem, loaded.InitrdAddress, 16)));
        }
        finally { File.Delete(k); File.Delete(rd); }
    }

    [Fact]
    public void FilesNamedThroughSymlinksLoadWhole()
    {
        // Debian names its kernel, initrd and OVMF through relative symlinks (/vmlinuz, /initrd.img,
        // /usr/share/qemu/OVMF.fd): what loads is the target, whole, not the link's few bytes.
        string dir = Directory.CreateTempSubdirectory("hyve-links").FullName;
        try
        {
            var initrd = new byte[10000];
            for (int i = 0; i < initrd.Length; i++) initrd[i] = (byte)(i * 7);
            File.WriteAllBytes(Path.Combine(dir, "vmlinuz-1"), BzImage(new byte[512], true));
            File.WriteAllBytes(Path.Combine(dir, "initrd.img-1"), initrd);
            var rom = new byte[8192];
            rom[^16] = 0xea; // something at the reset vector
            File.WriteAllBytes(Path.Combine(dir, "rom.fd"), rom);
            File.CreateSymbolicLink(Path.Combine(dir, "vmlinuz"), "vmlinuz-1");
            File.CreateSymbolicLink(Path.Combine(dir, "initrd.img"), "initrd.img-1");
            File.CreateSymbolicLink(Path.Combine(dir, "OVMF.fd"), "rom.fd");

            using var mem = new GuestMemory(64 << 20);
            var k = KernelLoader.Load(mem, Path.Combine(dir, "vmlinuz"), Path.Combine(dir, "initrd.img"), "quiet");
            Assert.Equal((ulong)initrd.Length, k.InitrdSize);
            Assert.Equal(initrd, Span(mem, k.InitrdAddress, initrd.Length));

            using var mem2 = new GuestMemory(16 << 20);
            BootRom.Load(mem2, Path.Combine(dir, "OVMF.fd"), null);
            Assert.Equal(0xea, Span(mem2, 0xfffffff0, 1)[0]);
        }
        finally { Directory.Delete(dir, true); }
    }

    [DebianKernelFact]
    public void DebianCloudKernelHeader()
    {
        string path = DebianKernelFactAttribute.Path!;
        var h = LinuxLoader.ParseHeader(File.ReadAllBytes(path));
        Assert.True(h.Version >= 0x20f, $"boot protocol 0x{h.Version:x}");
        Assert.True(h.Kernel64);
        Assert.True(h.Relocatable);
        Assert.True(h.InitSize > 0);

        using var mem = new GuestMemory(256 << 20);
        string initrd = Path.Combine("/boot", Path.GetFileName(path).Replace("vmlinuz", "initrd.img"));
        var k = KernelLoader.Load(mem, path, File.Exists(initrd) ? initrd : null, "console=ttyS0 earlyprintk=serial");
        Assert.Equal(KernelFormat.LinuxBzImage, k.Format);
        Assert.Equal(h.PrefAddress, k.KernelStart);
        Assert.Equal(k.KernelStart + 0x200, k.Cpu.Rip);
        Assert.True(k.InitrdAddress == 0 || k.InitrdAddress >= k.KernelEnd);
    }
}

/// <summary>A fact that needs Debian's cloud kernel: skipped with the reason when /boot/vmlinuz-*-cloud-amd64 is absent.</summary>
public sealed class DebianKernelFactAttribute : FactAttribute
{
    /// <summary>The newest installed cloud kernel, or null.</summary>
    public static string? Path { get; } =
        Directory.Exists("/boot") ? Directory.GetFiles("/boot", "vmlinuz-*-cloud-amd64").OrderBy(p => p).LastOrDefault() : null;

    public DebianKernelFactAttribute()
    {
        if (Path is null) Skip = "no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)";
    }
}
