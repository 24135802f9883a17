// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Vmm.Native;

namespace Hyve.Kvm;

/// <summary>The process's handle on /dev/kvm and what it reports once: API version, kvm_run size, supported CPUID.</summary>
public sealed unsafe class KvmSystem
{
    private static readonly Lazy<KvmSystem> Instance = new(() => new KvmSystem());
    private readonly KvmCpuidEntry2[] _cpuid;

    private KvmSystem()
    {
        Fd = Libc.Open("/dev/kvm", Libc.ORdWr | Libc.OCloexec);
        if (Fd < 0) throw new IOException($"cannot open /dev/kvm: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
        int version = Libc.Ioctl(Fd, KvmApi.GetApiVersion, 0);
        if (version != 12) throw new IOException($"/dev/kvm speaks API version {version}, not 12");
        RunSize = Libc.Ioctl(Fd, KvmApi.GetVcpuMmapSize, 0);
        if (RunSize <= 0) throw new IOException("KVM_GET_VCPU_MMAP_SIZE failed");
        _cpuid = QuerySupportedCpuid();
    }

    /// <summary>The shared instance; throws <see cref="IOException"/> when KVM cannot be used.</summary>
    public static KvmSystem Open() => Instance.Value;

    // A VM created ahead by OpenInBackground for the first KvmBackend; -1 when none is waiting.
    private static readonly object SpareGate = new();
    private static int _spareVmFd = -1;
    private static bool _vmTaken;

    /// <summary>
    /// Starts opening KVM on another thread: KVM_GET_SUPPORTED_CPUID (slow where CPUID traps to an outer hypervisor)
    /// and KVM_CREATE_VM then overlap the rest of start-up on another core. <see cref="Open"/> and
    /// <see cref="IsAvailable"/> wait for it and report its failure as their own.
    /// </summary>
    public static void OpenInBackground()
    {
        new Thread(() =>
        {
            try
            {
                var system = Instance.Value;
                lock (SpareGate)
                    if (!_vmTaken) _spareVmFd = Libc.Ioctl(system.Fd, KvmApi.CreateVm, 0);
            }
            catch (IOException)
            {
                // Open and IsAvailable rethrow it.
            }
        }) { IsBackground = true, Name = "kvm-open" }.Start();
    }

    /// <summary>A new KVM VM (KVM_CREATE_VM), or the one <see cref="OpenInBackground"/> created; -1 and errno on failure.</summary>
    internal int CreateVm()
    {
        lock (SpareGate)
        {
            _vmTaken = true;
            int fd = _spareVmFd;
            _spareVmFd = -1;
            if (fd >= 0) return fd;
        }
        return Libc.Ioctl(Fd, KvmApi.CreateVm, 0);
    }

    /// <summary>True when /proc/cpuinfo shows VT-x (vmx) or AMD-V (svm). Without either, a /dev/kvm that opens is one that
    /// runs guests through the kernel's instruction emulator (kvm-pvm here).</summary>
    public static bool HostHasHardwareVirtualization()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("flags", StringComparison.Ordinal) && (line.Contains(" vmx", StringComparison.Ordinal) || line.Contains(" svm", StringComparison.Ordinal)))
                    return true;
        }
        catch (IOException) { }
        return false;
    }

    /// <summary>True when /dev/kvm opens and answers; never throws.</summary>
    public static bool IsAvailable(out string reason)
    {
        try
        {
            Open();
            reason = "";
            return true;
        }
        catch (IOException e)
        {
            reason = e.Message;
            return false;
        }
    }

    /// <summary>The /dev/kvm descriptor.</summary>
    public int Fd { get; }

    /// <summary>Size of the mmap'd kvm_run area.</summary>
    public int RunSize { get; }

    /// <summary>True when KVM_CHECK_EXTENSION reports the capability.</summary>
    public bool Has(int cap) => Libc.Ioctl(Fd, KvmApi.CheckExtension, cap) > 0;

    /// <summary>The CPUID leaf a vCPU of a VM with <paramref name="topology"/> is given (KVM's supported entries with
    /// Hyve's topology applied, as KvmVcpu sets them), as (eax, ebx, ecx, edx); zeros for a leaf KVM does not list.</summary>
    public (uint Eax, uint Ebx, uint Ecx, uint Edx) GuestCpuid(Hyve.Vmm.Control.CpuTopology topology, uint leaf, uint subleaf)
    {
        var entries = SupportedCpuid();
        CpuidTopology.Apply(entries, topology, 0);
        foreach (var e in entries)
            if (e.Function == leaf && (e.Index == subleaf || (e.Flags & 1) == 0)) return (e.Eax, e.Ebx, e.Ecx, e.Edx);
        return default;
    }

    /// <summary>A copy of KVM_GET_SUPPORTED_CPUID's entries.</summary>
    internal KvmCpuidEntry2[] SupportedCpuid() => (KvmCpuidEntry2[])_cpuid.Clone();

    private KvmCpuidEntry2[] QuerySupportedCpuid()
    {
        // Start big enough for today's CPUs (about 75 entries): a too-small buffer makes KVM enumerate (host CPUID,
        // slow under nested virtualization) before failing with E2BIG, and the retry does it all again.
        for (int n = 256; n <= 4096; n *= 2)
        {
            int bytes = 8 + n * sizeof(KvmCpuidEntry2);
            byte* buf = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
            try
            {
                *(uint*)buf = (uint)n;
                if (Libc.Ioctl(Fd, KvmApi.GetSupportedCpuid, buf) == 0)
                {
                    int count = (int)*(uint*)buf;
                    return new ReadOnlySpan<KvmCpuidEntry2>(buf + 8, count).ToArray();
                }
                if (Marshal.GetLastPInvokeError() != 7 /* E2BIG */)
                    throw new IOException($"KVM_GET_SUPPORTED_CPUID: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
            }
            finally
            {
                NativeMemory.Free(buf);
            }
        }
        throw new IOException("KVM_GET_SUPPORTED_CPUID: too many entries");
    }
}
