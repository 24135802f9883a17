// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.X86;

namespace Hyve.Kvm;

/// <summary>KVM ioctl numbers, capabilities and exit reasons for x86-64 (Documentation/virt/kvm/api.rst).</summary>
internal static class KvmApi
{
    // _IOC(dir, 0xAE, nr, size) = dir << 30 | size << 16 | 0xAE << 8 | nr; dir 1 = write, 2 = read.
    private const uint W = 1u << 30, R = 2u << 30, RW = 3u << 30;
    private static nuint Io(uint nr) => 0xAE00 | nr;
    private static nuint Iow(uint nr, int size) => W | (uint)size << 16 | 0xAE00 | nr;
    private static nuint Ior(uint nr, int size) => R | (uint)size << 16 | 0xAE00 | nr;
    private static nuint Iowr(uint nr, int size) => RW | (uint)size << 16 | 0xAE00 | nr;

    public static readonly nuint GetApiVersion = Io(0x00);
    public static readonly nuint CreateVm = Io(0x01);
    public static readonly nuint CheckExtension = Io(0x03);
    public static readonly nuint GetVcpuMmapSize = Io(0x04);
    public static readonly nuint GetSupportedCpuid = Iowr(0x05, 8);
    public static readonly nuint CreateVcpu = Io(0x41);
    public static readonly nuint SetUserMemoryRegion = Iow(0x46, 32);
    /// <summary>KVM_GET_DIRTY_LOG: a slot's dirty bitmap since the last call, cleared as it is read (struct kvm_dirty_log).</summary>
    public static readonly nuint GetDirtyLog = Iow(0x42, 16);
    public static readonly nuint SetTssAddr = Io(0x47);
    public static readonly nuint SetIdentityMapAddr = Iow(0x48, 8);
    public static readonly nuint SetGsiRouting = Iow(0x6a, 8);
    /// <summary>KVM_IRQFD: an eventfd whose signal injects a GSI (struct kvm_irqfd).</summary>
    public static readonly nuint IrqFd = Iow(0x76, 32);
    /// <summary>KVM_IRQFD_FLAG_DEASSIGN.</summary>
    public const uint IrqFdDeassign = 1;
    public static readonly nuint Run = Io(0x80);
    public static readonly nuint GetRegs = Ior(0x81, 144);
    public static readonly nuint SetRegs = Iow(0x82, 144);
    public static readonly nuint GetSregs = Ior(0x83, 312);
    public static readonly nuint SetSregs = Iow(0x84, 312);
    /// <summary>KVM_TRANSLATE: a linear address to guest-physical through the vCPU's current paging (struct kvm_translation).</summary>
    public static readonly nuint Translate = Iowr(0x85, 24);
    public static readonly nuint Interrupt = Iow(0x86, 4);
    public static readonly nuint GetMsrs = Iowr(0x88, 8);
    public static readonly nuint SetMsrs = Iow(0x89, 8);
    public static readonly nuint SetSignalMask = Iow(0x8b, 4);
    public static readonly nuint GetFpu = Ior(0x8c, 416);
    public static readonly nuint SetFpu = Iow(0x8d, 416);
    /// <summary>KVM_GET_XSAVE: the vCPU's XSAVE image (struct kvm_xsave, 4 KiB; the first 512 bytes are in FXSAVE format).</summary>
    public static readonly nuint GetXsave = Ior(0xa4, 4096);
    /// <summary>KVM_SET_XSAVE.</summary>
    public static readonly nuint SetXsave = Iow(0xa5, 4096);
    public static readonly nuint GetLapic = Ior(0x8e, 1024);
    public static readonly nuint SetLapic = Iow(0x8f, 1024);
    public static readonly nuint SetCpuid2 = Iow(0x90, 8);
    public static readonly nuint GetMpState = Ior(0x98, 4);
    public static readonly nuint SetMpState = Iow(0x99, 4);
    public static readonly nuint Nmi = Io(0x9a);
    public static readonly nuint SetGuestDebug = Iow(0x9b, 72);
    public static readonly nuint GetVcpuEvents = Ior(0x9f, 64);
    public static readonly nuint SetVcpuEvents = Iow(0xa0, 64);
    public static readonly nuint EnableCap = Iow(0xa3, 104);
    /// <summary>KVM_GET_XCRS / KVM_SET_XCRS (struct kvm_xcrs, 392 bytes).</summary>
    public static readonly nuint GetXcrs = Ior(0xa6, 392);
    public static readonly nuint SetXcrs = Iow(0xa7, 392);
    /// <summary>KVM_SET_TSC_KHZ / KVM_GET_TSC_KHZ.</summary>
    public static readonly nuint SetTscKhz = Io(0xa2);
    public static readonly nuint GetTscKhz = Io(0xa3);
    public static readonly nuint SignalMsi = Iow(0xa5, 32);
    /// <summary>KVM_IOEVENTFD: a guest write to an address or port signals an eventfd without exiting.</summary>
    public static readonly nuint IoEventFd = Iow(0x79, 64);
    /// <summary>KVM_IOEVENTFD_FLAG_DATAMATCH.</summary>
    public const uint IoEventFdDataMatch = 1u << 0;
    /// <summary>KVM_IOEVENTFD_FLAG_PIO.</summary>
    public const uint IoEventFdPio = 1u << 1;
    /// <summary>KVM_IOEVENTFD_FLAG_DEASSIGN.</summary>
    public const uint IoEventFdDeassign = 1u << 2;

    public const int CapIrqRouting = 25;
    public const int CapImmediateExit = 136;
    public const int CapSplitIrqchip = 121;
    public const int CapX86UserSpaceMsr = 188;

    public const uint MsrExitReasonUnknown = 1u << 1;

    public const uint MemReadonly = 1u << 1;
    /// <summary>KVM_MEM_LOG_DIRTY_PAGES: KVM write-protects the slot and logs the pages the guest writes.</summary>
    public const uint MemLogDirtyPages = 1u << 0;

    public const uint ExitUnknown = 0, ExitException = 1, ExitIo = 2, ExitHypercall = 3, ExitDebug = 4, ExitHlt = 5,
        ExitMmio = 6, ExitIrqWindowOpen = 7, ExitShutdown = 8, ExitFailEntry = 9, ExitIntr = 10, ExitNmi = 16,
        ExitInternalError = 17, ExitSystemEvent = 24, ExitIoapicEoi = 26, ExitX86Rdmsr = 29, ExitX86Wrmsr = 30;

    public const uint SystemEventShutdown = 1, SystemEventReset = 2, SystemEventCrash = 3;
    public const uint InternalErrorEmulation = 1;
    public const ulong InternalErrorEmulationFlagInstructionBytes = 1;

    public const uint MpStateRunnable = 0, MpStateUninitialized = 1, MpStateInitReceived = 2, MpStateHalted = 3, MpStateSipiReceived = 4;

    // struct kvm_run offsets (x86).
    public const int RunRequestInterruptWindow = 0;
    public const int RunImmediateExit = 1;
    public const int RunExitReason = 8;
    public const int RunReadyForInterruptInjection = 12;
    public const int RunIfFlag = 13;
    public const int RunExitData = 32;
}

/// <summary>struct kvm_regs.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmRegs
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp, R8, R9, R10, R11, R12, R13, R14, R15, Rip, Rflags;
}

/// <summary>struct kvm_segment.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmSegment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    public byte Type, Present, Dpl, Db, S, L, G, Avl, Unusable, Padding;

    /// <summary>The hidden part in Hyve's (VMX) access-rights layout.</summary>
    public readonly SegmentDescriptor ToDescriptor() => new(Base, Limit,
        Type | (uint)S << 4 | (uint)Dpl << 5 | (uint)Present << 7 | (uint)Avl << 12
        | (uint)L << 13 | (uint)Db << 14 | (uint)G << 15 | (uint)Unusable << 16);

    /// <summary>Loads the hidden part from Hyve's layout.</summary>
    public void SetDescriptor(in SegmentDescriptor d)
    {
        Base = d.Base;
        Limit = d.Limit;
        Type = (byte)(d.Access & 0xf);
        S = (byte)(d.Access >> 4 & 1);
        Dpl = (byte)(d.Access >> 5 & 3);
        Present = (byte)(d.Access >> 7 & 1);
        Avl = (byte)(d.Access >> 12 & 1);
        L = (byte)(d.Access >> 13 & 1);
        Db = (byte)(d.Access >> 14 & 1);
        G = (byte)(d.Access >> 15 & 1);
        Unusable = (byte)(d.Access >> 16 & 1);
    }
}

/// <summary>struct kvm_dtable.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmDtable
{
    public ulong Base;
    public ushort Limit, Pad0, Pad1, Pad2;
}

/// <summary>struct kvm_sregs.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmSregs
{
    public KvmSegment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public KvmDtable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer, ApicBase;
    public fixed ulong InterruptBitmap[4];
}

/// <summary>struct kvm_dirty_log (the bitmap pointer in the union with padding2).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmDirtyLogArgs
{
    public uint Slot, Padding1;
    public ulong DirtyBitmap;
}

/// <summary>struct kvm_userspace_memory_region.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmUserspaceMemoryRegion
{
    public uint Slot, Flags;
    public ulong GuestPhysAddr, MemorySize, UserspaceAddr;
}

/// <summary>struct kvm_cpuid_entry2.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmCpuidEntry2
{
    public uint Function, Index, Flags, Eax, Ebx, Ecx, Edx, Pad0, Pad1, Pad2;
}

/// <summary>struct kvm_enable_cap.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmEnableCap
{
    public uint Cap, Flags;
    public fixed ulong Args[4];
    public fixed byte Pad[64];
}

/// <summary>struct kvm_ioeventfd (64 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmIoEventFd
{
    public ulong DataMatch, Addr;
    public uint Len;
    public int Fd;
    public uint Flags;
    public fixed byte Pad[36];

    /// <summary>The ioctl argument for <paramref name="e"/> (assigned, or deassigned).</summary>
    public static KvmIoEventFd From(Hyve.Vmm.IoEventFd e, bool assign) => new()
    {
        DataMatch = e.DataMatch ?? 0,
        Addr = e.Address,
        Len = e.Length,
        Fd = e.Fd,
        Flags = (e.DataMatch is null ? 0 : KvmApi.IoEventFdDataMatch) | (e.Pio ? KvmApi.IoEventFdPio : 0) | (assign ? 0 : KvmApi.IoEventFdDeassign),
    };
}

/// <summary>struct kvm_irqfd (32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmIrqFd
{
    public int Fd;
    public uint Gsi, Flags;
    public int ResampleFd;
    public fixed byte Pad[16];
}

/// <summary>struct kvm_msi.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmMsi
{
    public uint AddressLo, AddressHi, Data, Flags, DevId;
    public fixed byte Pad[12];
}
