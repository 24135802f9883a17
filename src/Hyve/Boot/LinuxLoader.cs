// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Vmm;
using Hyve.X86;

namespace Hyve.Boot;

/// <summary>A bzImage's setup header (Linux Documentation/arch/x86/boot.rst), the fields a loader reads.</summary>
public sealed record LinuxSetupHeader
{
    /// <summary>Boot protocol version, e.g. 0x20f for 2.15.</summary>
    public ushort Version { get; init; }
    /// <summary>Size of the real-mode setup in 512-byte sectors (0 means 4).</summary>
    public byte SetupSects { get; init; }
    /// <summary>Protected-mode code size in 16-byte paragraphs.</summary>
    public uint SysSize { get; init; }
    /// <summary>loadflags: bit 0 LOADED_HIGH, bit 7 CAN_USE_HEAP.</summary>
    public byte LoadFlags { get; init; }
    /// <summary>The 32-bit entry's default address.</summary>
    public uint Code32Start { get; init; }
    /// <summary>Highest address the initrd may occupy.</summary>
    public uint InitrdAddrMax { get; init; }
    /// <summary>Alignment the kernel wants when relocated.</summary>
    public uint KernelAlignment { get; init; }
    /// <summary>True when the kernel may be loaded anywhere.</summary>
    public bool Relocatable { get; init; }
    /// <summary>xloadflags: bit 0 XLF_KERNEL_64 (has the 64-bit entry at +0x200), bit 1 XLF_CAN_BE_LOADED_ABOVE_4G.</summary>
    public ushort XLoadFlags { get; init; }
    /// <summary>Longest command line, excluding the NUL.</summary>
    public uint CmdlineSize { get; init; }
    /// <summary>Preferred load address (relocatable kernels).</summary>
    public ulong PrefAddress { get; init; }
    /// <summary>Memory the kernel needs from its load address while it decompresses and starts.</summary>
    public uint InitSize { get; init; }
    /// <summary>EFI handover entry offset.</summary>
    public uint HandoverOffset { get; init; }
    /// <summary>File offset of the protected-mode kernel: (setup_sects + 1) * 512.</summary>
    public int SetupSize => ((SetupSects == 0 ? 4 : SetupSects) + 1) * 512;
    /// <summary>XLF_KERNEL_64: the kernel has a 64-bit entry point.</summary>
    public bool Kernel64 => (XLoadFlags & 1) != 0;
}

/// <summary>Linux bzImage loading with the 32-bit or 64-bit boot protocol (no real-mode setup code runs).</summary>
public static class LinuxLoader
{
    /// <summary>"HdrS" at offset 0x202.</summary>
    public const uint HdrS = 0x53726448;
    /// <summary>Oldest boot protocol accepted (2.06: cmdline_size).</summary>
    public const ushort MinVersion = 0x206;

    private const byte LoadedHigh = 0x01, CanUseHeap = 0x80;
    private const int BootParamsSize = 4096;
    private const int HeaderStart = 0x1f1, HeaderLimit = 0x290;
    private const int E820Table = 0x2d0, E820Entries = 0x1e8;

    /// <summary>Parses the setup header of a bzImage; a <see cref="HostConfigException"/> when it is not one this loader boots.</summary>
    public static LinuxSetupHeader ParseHeader(ReadOnlySpan<byte> image, string name = "kernel")
    {
        if (image.Length < 0x270 || BinaryPrimitives.ReadUInt32LittleEndian(image[0x202..]) != HdrS)
            throw new HostConfigException($"kernel {name}: not a Linux bzImage (no HdrS signature)");
        if (BinaryPrimitives.ReadUInt16LittleEndian(image[0x1fe..]) != 0xaa55)
            throw new HostConfigException($"kernel {name}: corrupt Linux boot sector (no 0xAA55 boot flag)");
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(image[0x206..]);
        if (version < MinVersion)
            throw new HostConfigException($"kernel {name}: Linux boot protocol {version >> 8}.{version & 0xff:d2} is too old (2.06 or later needed)");
        return new LinuxSetupHeader
        {
            Version = version,
            SetupSects = image[0x1f1],
            SysSize = BinaryPrimitives.ReadUInt32LittleEndian(image[0x1f4..]),
            LoadFlags = image[0x211],
            Code32Start = BinaryPrimitives.ReadUInt32LittleEndian(image[0x214..]),
            InitrdAddrMax = BinaryPrimitives.ReadUInt32LittleEndian(image[0x22c..]),
            KernelAlignment = BinaryPrimitives.ReadUInt32LittleEndian(image[0x230..]),
            Relocatable = image[0x234] != 0,
            XLoadFlags = version >= 0x20c ? BinaryPrimitives.ReadUInt16LittleEndian(image[0x236..]) : (ushort)0,
            CmdlineSize = BinaryPrimitives.ReadUInt32LittleEndian(image[0x238..]),
            PrefAddress = version >= 0x20a ? BinaryPrimitives.ReadUInt64LittleEndian(image[0x258..]) : 0,
            InitSize = version >= 0x20a ? BinaryPrimitives.ReadUInt32LittleEndian(image[0x260..]) : 0,
            HandoverOffset = version >= 0x20b ? BinaryPrimitives.ReadUInt32LittleEndian(image[0x264..]) : 0,
        };
    }

    internal static LoadedKernel Load(BootContext ctx)
    {
        byte[] image = ctx.Kernel;
        var h = ParseHeader(image, ctx.KernelName);
        if ((h.LoadFlags & LoadedHigh) == 0) throw ctx.Fail("is a zImage (loaded low); only bzImage kernels are supported");
        int setupSize = h.SetupSize;
        long pmSize = image.Length - (long)setupSize;
        // syssize counts 16-byte paragraphs, rounded up: a file shorter by a whole paragraph or more lost its tail.
        if (pmSize <= 0 || (h.SysSize != 0 && (ulong)pmSize + 16 <= (ulong)h.SysSize * 16))
            throw ctx.Fail($"truncated bzImage ({image.Length} bytes; its header describes {setupSize + (long)h.SysSize * 16})");
        byte[] cmdline = ctx.CmdlineBytes((int)Math.Min(h.CmdlineSize, int.MaxValue));

        // Memory needed from the load address: init_size covers decompression; never less than the image.
        ulong need = Math.Max((ulong)pmSize, h.InitSize);
        ulong load = ChooseLoadAddress(ctx, h, need);
        ctx.LoadSegment(load, image.AsSpan(setupSize), (ulong)pmSize, "protected-mode kernel");
        ulong kernelEnd = load + need;

        // The zero page: the setup header as the image has it, then the loader's fields.
        var bp = ctx.Span(KernelLoader.InfoAddress, BootParamsSize, "boot_params");
        bp.Clear();
        int headerEnd = Math.Min(0x202 + image[0x201], HeaderLimit);
        image.AsSpan(HeaderStart, headerEnd - HeaderStart).CopyTo(bp[HeaderStart..]);
        bp[0x210] = 0xff; // type_of_loader: undefined boot loader
        bp[0x211] = (byte)(h.LoadFlags | CanUseHeap);
        BinaryPrimitives.WriteUInt16LittleEndian(bp[0x224..], 0xfe00 - 0x200); // heap_end_ptr
        BinaryPrimitives.WriteUInt32LittleEndian(bp[0x214..], (uint)load); // code32_start: where it really is
        ctx.Write(KernelLoader.CmdlineAddress, cmdline, "command line");
        BinaryPrimitives.WriteUInt32LittleEndian(bp[0x228..], (uint)KernelLoader.CmdlineAddress);

        // initrd_addr_max is the highest byte the initrd may use; before 2.03 it was fixed at 0x37ffffff.
        ulong ceiling = (ulong)(h.Version >= 0x203 ? h.InitrdAddrMax : 0x37ffffffu) + 1;
        ulong initrd = ctx.PlaceInitrd(kernelEnd, ceiling);
        ulong initrdSize = ctx.Initrd is null ? 0 : (ulong)ctx.Initrd.Length;
        BinaryPrimitives.WriteUInt32LittleEndian(bp[0x218..], (uint)initrd);
        BinaryPrimitives.WriteUInt32LittleEndian(bp[0x21c..], (uint)initrdSize);
        BinaryPrimitives.WriteUInt32LittleEndian(bp[0x0c0..], (uint)(initrd >> 32)); // ext_ramdisk_image
        BinaryPrimitives.WriteUInt32LittleEndian(bp[0x0c4..], (uint)(initrdSize >> 32)); // ext_ramdisk_size
        if (ctx.AcpiRsdp != 0) BinaryPrimitives.WriteUInt64LittleEndian(bp[0x070..], ctx.AcpiRsdp);
        bp[E820Entries] = (byte)ctx.E820.WriteTo(bp[E820Table..], E820Map.MaxZeroPageEntries);

        BootCpuState cpu;
        if (h.Kernel64)
        {
            // startup_64 sits 0x200 past the 32-bit entry; boot.rst's 64-bit protocol wants the kernel, zero page
            // and command line identity-mapped: the first 4 GiB are.
            cpu = BootCpuState.Long64(ctx.Memory, load + 0x200, KernelLoader.PageTableAddress, KernelLoader.GdtAddress, KernelLoader.StackTop);
        }
        else
        {
            cpu = BootCpuState.Flat32(ctx.Memory, load, KernelLoader.GdtAddress, KernelLoader.StackTop);
        }
        // ESI = boot_params; EBP, EDI, EBX = 0 (already zero).
        cpu[Reg.Rsi] = KernelLoader.InfoAddress;
        return new LoadedKernel(KernelFormat.LinuxBzImage, cpu, load, kernelEnd, initrd, initrdSize, KernelLoader.InfoAddress);
    }

    private static ulong ChooseLoadAddress(BootContext ctx, LinuxSetupHeader h, ulong need)
    {
        if (h.Relocatable)
        {
            if (h.PrefAddress is >= KernelLoader.BootDataEnd and < 1ul << 32 && ctx.E820.IsRam(h.PrefAddress, need))
                return h.PrefAddress;
            // Otherwise the lowest suitably aligned address from 1 MiB: the kernel moves itself from there.
            ulong align = h.KernelAlignment is >= 0x1000 and <= 1u << 30 && (h.KernelAlignment & (h.KernelAlignment - 1)) == 0
                ? h.KernelAlignment : 0x100000;
            ulong addr = (E820Map.HighStart + align - 1) & ~(align - 1);
            ctx.CheckKernelRange(addr, need, $"kernel (needs {need >> 20} MiB from its load address)");
            return addr;
        }
        ulong fixedAddr = h.Code32Start == 0 ? E820Map.HighStart : h.Code32Start;
        // The Linux boot protocol fixes the zero page and command line in low memory: they do not move.
        if (fixedAddr < KernelLoader.BootDataEnd)
            throw ctx.Fail($"kernel at 0x{fixedAddr:x} overlaps the loader's boot data below 0x{KernelLoader.BootDataEnd:x}");
        ctx.CheckKernelRange(fixedAddr, need, $"kernel (needs {need >> 20} MiB from its load address)");
        return fixedAddr;
    }
}
