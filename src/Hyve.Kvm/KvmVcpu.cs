// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using System.Text;
using Hyve.Vmm;
using Hyve.Vmm.State;
using Hyve.Vmm.Io;
using Hyve.Vmm.Native;
using Hyve.X86;

namespace Hyve.Kvm;

/// <summary>
/// One vCPU on KVM: the mapped kvm_run, the exit loop that dispatches port, MMIO and MSR exits to the VM,
/// and register access. A kick is a directed signal that stays blocked outside KVM_RUN
/// (KVM_SET_SIGNAL_MASK unblocks it only inside), so it can never be lost or delivered to a handler.
/// </summary>
internal sealed unsafe class KvmVcpu : IVcpuBackend
{
    private readonly KvmBackend _vm;
    private readonly Vm _owner;
    private readonly int _fd;
    private readonly byte* _run;
    private readonly int _runSize;
    private volatile int _tid;
    private volatile bool _kickRequested;
    private long _exits;
    private bool _exitedOnce;
    private KvmFallback? _fallback;

    public KvmVcpu(KvmBackend vm, int id)
    {
        _vm = vm;
        _owner = vm.Vm;
        Id = id;
        _fd = Libc.Ioctl(vm.VmFd, KvmApi.CreateVcpu, id);
        if (_fd < 0) throw new IOException($"KVM_CREATE_VCPU {id}: {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
        _runSize = vm.System.RunSize;
        nint p = Libc.Mmap(0, (nuint)_runSize, Libc.ProtRead | Libc.ProtWrite, Libc.MapShared, _fd, 0);
        if (p == Libc.MapFailed)
        {
            Libc.Close(_fd);
            throw new IOException($"mmap kvm_run for vcpu {id} failed");
        }
        _run = (byte*)p;
        SetCpuid();
        if (_owner.X2ApicAtStart) SetMsr(Hyve.Vmm.Io.LapicRegisters.MsrApicBase, X2ApicStartBase(Id));
    }

    /// <summary>IA32_APIC_BASE for -x: the default base, enabled, in x2APIC mode, BSP on vCPU 0 (KVM's own power-on
    /// value plus EXTD, which KVM accepts from the host once CPUID reports x2APIC).</summary>
    internal static ulong X2ApicStartBase(int vcpu)
        => 0xFEE0_0000ul | 1ul << 11 | Hyve.Vmm.Io.LapicRegisters.BaseX2Apic | (vcpu == 0 ? 1ul << 8 : 0);

    private void SetMsr(uint index, ulong value)
    {
        byte* buf = stackalloc byte[8 + 16];
        new Span<byte>(buf, 24).Clear();
        *(uint*)buf = 1;
        *(uint*)(buf + 8) = index;
        *(ulong*)(buf + 16) = value;
        if (Libc.Ioctl(_fd, KvmApi.SetMsrs, buf) != 1)
            throw new IOException($"KVM_SET_MSRS 0x{index:x} = 0x{value:x} was refused");
    }

    public int Id { get; }

    public long ExitCount => Volatile.Read(ref _exits);

    public string LastError { get; private set; } = "";

    private void SetCpuid()
    {
        var entries = _vm.System.SupportedCpuid();
        CpuidTopology.Apply(entries, _owner.Topology, Id);
        if (_owner.CpuModelExplicit) CpuidFilter.Apply(entries, _owner.CpuModel);
        int bytes = 8 + entries.Length * sizeof(KvmCpuidEntry2);
        byte* buf = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            *(uint*)buf = (uint)entries.Length;
            entries.AsSpan().CopyTo(new Span<KvmCpuidEntry2>(buf + 8, entries.Length));
            Check(Libc.Ioctl(_fd, KvmApi.SetCpuid2, buf), "KVM_SET_CPUID2");
        }
        finally
        {
            NativeMemory.Free(buf);
        }
    }

    public void AttachThread()
    {
        Libc.SigMask(Libc.SigBlock, Libc.SigKick);
        // Inside KVM_RUN nothing is blocked, so a pending kick makes KVM_RUN return EINTR.
        byte* mask = stackalloc byte[16];
        *(uint*)mask = 8;
        *(ulong*)(mask + 4) = 0;
        Check(Libc.Ioctl(_fd, KvmApi.SetSignalMask, mask), "KVM_SET_SIGNAL_MASK");
        _tid = Libc.Gettid();
    }

    public void Kick()
    {
        _kickRequested = true;
        int tid = _tid;
        if (tid != 0) Libc.Tgkill(Libc.Getpid(), tid, Libc.SigKick);
    }

    public VcpuEvent Run()
    {
        while (true)
        {
            if (Id == 0) OfferPicInterrupt();
            if (_kickRequested)
            {
                _kickRequested = false;
                Libc.ConsumePendingSignal(Libc.SigKick);
                return VcpuEvent.Kicked;
            }
            if (Libc.Ioctl(_fd, KvmApi.Run, 0) < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Libc.EIntr || errno == Libc.EAgain)
                {
                    _kickRequested = false;
                    Libc.ConsumePendingSignal(Libc.SigKick);
                    return VcpuEvent.Kicked;
                }
                LastError = $"KVM_RUN: {Libc.ErrnoText(errno)}";
                return VcpuEvent.Error;
            }
            if (!_exitedOnce)
            {
                _exitedOnce = true;
                StartupTrace.FirstExit();
            }
            uint reason = *(uint*)(_run + KvmApi.RunExitReason);
            switch (reason)
            {
                case KvmApi.ExitIo:
                    HandleIo();
                    break;
                case KvmApi.ExitMmio:
                    HandleMmio();
                    break;
                case KvmApi.ExitX86Rdmsr:
                case KvmApi.ExitX86Wrmsr:
                    HandleMsr(reason == KvmApi.ExitX86Wrmsr);
                    break;
                case KvmApi.ExitIoapicEoi:
                    _owner.Ioapic.EndOfInterrupt(_run[KvmApi.RunExitData]);
                    break;
                case KvmApi.ExitIrqWindowOpen:
                    break;
                case KvmApi.ExitIntr:
                    return VcpuEvent.Kicked;
                case KvmApi.ExitHlt:
                    if ((GetRegs().Rflags & 0x200) == 0) return VcpuEvent.HaltedInterruptsDisabled;
                    break;
                case KvmApi.ExitShutdown:
                    return VcpuEvent.TripleFault;
                case KvmApi.ExitSystemEvent:
                    return *(uint*)(_run + KvmApi.RunExitData) switch
                    {
                        KvmApi.SystemEventReset => VcpuEvent.Reset,
                        KvmApi.SystemEventShutdown => VcpuEvent.PowerOff,
                        _ => Fail("the guest crashed (KVM system event)"),
                    };
                case KvmApi.ExitDebug:
                    ReadDebugExit();
                    return VcpuEvent.Debug;
                case KvmApi.ExitInternalError:
                    if (!EmulateInUserSpace()) return Fail(LastError.Length > 0 ? LastError : DescribeInternalError());
                    break;
                case KvmApi.ExitFailEntry:
                    return Fail($"VM entry failed (hardware reason 0x{*(ulong*)(_run + KvmApi.RunExitData):x})");
                default:
                    return Fail($"unhandled KVM exit reason {reason}");
            }
            _exits++;
        }
    }

    // The 8259's INTR reaches the BSP as ExtINT: KVM takes a vector with KVM_INTERRUPT only when the guest can
    // accept it now (IF set, LINT0 ExtINT or the local APIC off); otherwise ask for an interrupt-window exit.
    private void OfferPicInterrupt()
    {
        var pic = _owner.Pic;
        if (!pic.IntrAsserted)
        {
            _run[KvmApi.RunRequestInterruptWindow] = 0;
            return;
        }
        if (_run[KvmApi.RunReadyForInterruptInjection] != 0)
        {
            uint vector = (uint)pic.InterruptAcknowledge();
            Libc.Ioctl(_fd, KvmApi.Interrupt, &vector);
            _run[KvmApi.RunRequestInterruptWindow] = 0;
        }
        else
        {
            _run[KvmApi.RunRequestInterruptWindow] = 1;
        }
    }

    private VcpuEvent Fail(string message)
    {
        LastError = message;
        return VcpuEvent.Error;
    }

    private void HandleIo()
    {
        byte* e = _run + KvmApi.RunExitData;
        bool output = e[0] == 1;
        int size = e[1];
        ushort port = *(ushort*)(e + 2);
        uint count = *(uint*)(e + 4);
        ulong offset = *(ulong*)(e + 8);
        if (size is not (1 or 2 or 4) || offset + (ulong)size * count > (ulong)_runSize) return;
        byte* data = _run + offset;
        var ports = _owner.Ports;
        for (uint i = 0; i < count; i++, data += size)
        {
            if (output)
            {
                uint v = size == 1 ? *data : size == 2 ? *(ushort*)data : *(uint*)data;
                ports.Write(port, size, v);
            }
            else
            {
                uint v = ports.Read(port, size);
                if (size == 1) *data = (byte)v;
                else if (size == 2) *(ushort*)data = (ushort)v;
                else *(uint*)data = v;
            }
        }
    }

    private void HandleMmio()
    {
        byte* e = _run + KvmApi.RunExitData;
        ulong gpa = *(ulong*)e;
        byte* data = e + 8;
        int len = (int)*(uint*)(e + 16);
        bool write = e[20] != 0;
        if (len is not (1 or 2 or 4 or 8)) len = Math.Clamp(len, 1, 8);
        if (write)
        {
            ulong v = 0;
            for (int i = 0; i < len; i++) v |= (ulong)data[i] << (8 * i);
            // Writes to read-only device memory (the boot ROM) are dropped, as a ROM would.
            _owner.Mmio.Write(gpa, len, v);
        }
        else
        {
            ulong v = _owner.Mmio.Read(gpa, len);
            for (int i = 0; i < len; i++) data[i] = (byte)(v >> (8 * i));
        }
    }

    private void HandleMsr(bool write)
    {
        byte* e = _run + KvmApi.RunExitData;
        // Only MSRs KVM does not know reach here: with x86.strictmsr they raise #GP (error = 1), otherwise
        // reads give 0 and writes are ignored.
        e[0] = _owner.StrictMsr ? (byte)1 : (byte)0;
        if (!write) *(ulong*)(e + 16) = 0;
    }

    // KVM_INTERNAL_ERROR_EMULATION: the kernel could not emulate the instruction; hyve's engine does it.
    private bool EmulateInUserSpace()
    {
        byte* e = _run + KvmApi.RunExitData;
        if (*(uint*)e != KvmApi.InternalErrorEmulation) return false;
        ReadOnlySpan<byte> bytes = default;
        if (*(uint*)(e + 4) >= 1 && (*(ulong*)(e + 8) & KvmApi.InternalErrorEmulationFlagInstructionBytes) != 0)
            bytes = new ReadOnlySpan<byte>(e + 17, Math.Min((int)e[16], 15));
        _fallback ??= new KvmFallback(_vm, _fd, Id);
        if (_fallback.Emulate(bytes, out var error) != KvmFallback.Outcome.Failed) return true;
        LastError = error;
        return false;
    }

    private string DescribeInternalError()
    {
        byte* e = _run + KvmApi.RunExitData;
        uint suberror = *(uint*)e;
        var regs = GetRegs();
        var sregs = GetSregs();
        var sb = new StringBuilder();
        if (suberror == KvmApi.InternalErrorEmulation)
        {
            sb.Append($"instruction emulation failed at {sregs.Cs.Selector:x4}:{regs.Rip:x16}");
            uint ndata = *(uint*)(e + 4);
            ulong flags = *(ulong*)(e + 8);
            if (ndata >= 1 && (flags & KvmApi.InternalErrorEmulationFlagInstructionBytes) != 0)
            {
                int n = Math.Min((int)e[16], 15);
                sb.Append(" (instruction bytes");
                for (int i = 0; i < n; i++) sb.Append($" {e[17 + i]:x2}");
                sb.Append(')');
            }
        }
        else
        {
            sb.Append($"KVM internal error {suberror} at {sregs.Cs.Selector:x4}:{regs.Rip:x16}");
        }
        return sb.ToString();
    }

    public VcpuRunState QueryRunState()
    {
        uint mp = 0;
        if (Libc.Ioctl(_fd, KvmApi.GetMpState, &mp) != 0) return VcpuRunState.Running;
        switch (mp)
        {
            case KvmApi.MpStateUninitialized or KvmApi.MpStateInitReceived:
                return VcpuRunState.WaitingForStartup;
            case KvmApi.MpStateHalted:
                return (GetRegs().Rflags & 0x200) == 0 ? VcpuRunState.HaltedInterruptsDisabled : VcpuRunState.Halted;
            default:
                StepIfStuck();
                return VcpuRunState.Running;
        }
    }

    // The RIP and exit count at the last probe that found this vCPU running.
    private ulong _probeRip = ulong.MaxValue;
    private long _probeExits = -1;

    /// <summary>
    /// KVM can retry one instruction forever without an exit: its emulator restarts an instruction whose implicit
    /// write fails, such as the Accessed bit a far JMP sets in a GDT descriptor that lies in the read-only boot ROM
    /// (a real chipset drops that write and the CPU goes on). Called on probes (every 50 ms while the vCPU makes no
    /// exit): when RIP has not moved since the last probe and no event is being injected, the instruction runs once
    /// in hyve's engine, where a write to ROM is dropped. A guest merely spinning on a jump-to-self loses nothing:
    /// the engine executes that jump as the CPU would.
    /// </summary>
    private void StepIfStuck()
    {
        ulong rip = GetRegs().Rip;
        long exits = ExitCount;
        if (rip != _probeRip || exits != _probeExits)
        {
            _probeRip = rip;
            _probeExits = exits;
            return;
        }
        if (SpinsOnJumpToSelf(rip)) return;
        byte* ev = stackalloc byte[64];
        if (Libc.Ioctl(_fd, KvmApi.GetVcpuEvents, ev) != 0) return;
        if (ev[0] != 0 || ev[3] != 0 || ev[8] != 0 || ev[12] != 0) return; // an exception, interrupt or NMI is on its way in
        _fallback ??= new KvmFallback(_vm, _fd, Id);
        // A failure here (an instruction the engine lacks) leaves the vCPU to KVM as it was.
        _fallback.Emulate(default, out _);
        _probeRip = GetRegs().Rip;
    }

    /// <summary>
    /// True when CS:RIP holds a jump to itself (JMP rel8 -2; JMP rel16 -3 or rel32 -5 by code size): a guest waiting
    /// forever, which KVM runs correctly. The check keeps the engine (about 1 MiB of decoder tables) from being built
    /// for a guest that only spins.
    /// </summary>
    private bool SpinsOnJumpToSelf(ulong rip)
    {
        var s = GetSregs();
        ulong* t = stackalloc ulong[3]; // struct kvm_translation: linear_address, physical_address, valid/writeable/usermode
        t[0] = s.Cs.Base + rip;
        t[1] = 0;
        t[2] = 0;
        if (Libc.Ioctl(_fd, KvmApi.Translate, t) != 0 || (byte)t[2] == 0) return false;
        bool wide = s.Cs.L != 0 || s.Cs.Db != 0;
        int length = wide ? 5 : 3;
        if ((t[1] & 0xfff) + (ulong)length > 0x1000) length = 2; // the short form is all that can be checked on this page
        if (!_vm.Vm.Memory.TryGetSpan(t[1], length, MemProt.Read, out var code)) return false;
        if (code[0] == 0xEB && code[1] == 0xFE) return true;
        if (code.Length < 3 || code[0] != 0xE9) return false;
        return wide
            ? code.Length == 5 && code[1] == 0xFB && code[2] == 0xFF && code[3] == 0xFF && code[4] == 0xFF
            : code[1] == 0xFD && code[2] == 0xFF;
    }

    private KvmRegs GetRegs()
    {
        KvmRegs r;
        Check(Libc.Ioctl(_fd, KvmApi.GetRegs, &r), "KVM_GET_REGS");
        return r;
    }

    private KvmSregs GetSregs()
    {
        KvmSregs s;
        Check(Libc.Ioctl(_fd, KvmApi.GetSregs, &s), "KVM_GET_SREGS");
        return s;
    }

    private void Check(int rc, string what)
    {
        if (rc < 0) throw new IOException($"{what} (vcpu {Id}): {Libc.ErrnoText(Marshal.GetLastPInvokeError())}");
    }

    public ulong GetRegister(Reg reg)
    {
        if (reg <= Reg.Rflags)
        {
            var r = GetRegs();
            return *GprSlot(&r, reg);
        }
        if (reg is >= Reg.Dr0 and <= Reg.Dr7)
        {
            var d = GetDebugRegs();
            return d[DebugIndex(reg)];
        }
        var s = GetSregs();
        return reg switch
        {
            Reg.Cr0 => s.Cr0, Reg.Cr2 => s.Cr2, Reg.Cr3 => s.Cr3, Reg.Cr4 => s.Cr4, Reg.Cr8 => s.Cr8, Reg.Efer => s.Efer,
            Reg.Gdtr or Reg.Idtr => 0,
            _ => SegmentOf(&s, reg)->Selector,
        };
    }

    public void SetRegister(Reg reg, ulong value)
    {
        if (reg <= Reg.Rflags)
        {
            var r = GetRegs();
            *GprSlot(&r, reg) = value;
            Check(Libc.Ioctl(_fd, KvmApi.SetRegs, &r), "KVM_SET_REGS");
            return;
        }
        if (reg is >= Reg.Dr0 and <= Reg.Dr7)
        {
            var d = GetDebugRegs();
            d[DebugIndex(reg)] = value;
            SetDebugRegs(d);
            return;
        }
        var s = GetSregs();
        switch (reg)
        {
            case Reg.Cr0: s.Cr0 = value; break;
            case Reg.Cr2: s.Cr2 = value; break;
            case Reg.Cr3: s.Cr3 = value; break;
            case Reg.Cr4: s.Cr4 = value; break;
            case Reg.Cr8: s.Cr8 = value; break;
            case Reg.Efer: s.Efer = value; break;
            case Reg.Gdtr or Reg.Idtr: throw new ArgumentException($"{reg} has no selector");
            default: SegmentOf(&s, reg)->Selector = (ushort)value; break;
        }
        Check(Libc.Ioctl(_fd, KvmApi.SetSregs, &s), "KVM_SET_SREGS");
    }

    public void SetControlRegisters(ulong cr0, ulong cr3, ulong cr4, ulong efer)
    {
        var s = GetSregs();
        s.Cr0 = cr0; s.Cr3 = cr3; s.Cr4 = cr4; s.Efer = efer;
        Check(Libc.Ioctl(_fd, KvmApi.SetSregs, &s), "KVM_SET_SREGS");
    }

    public SegmentDescriptor GetDescriptor(Reg reg)
    {
        var s = GetSregs();
        if (reg == Reg.Gdtr) return new SegmentDescriptor(s.Gdt.Base, s.Gdt.Limit, 0);
        if (reg == Reg.Idtr) return new SegmentDescriptor(s.Idt.Base, s.Idt.Limit, 0);
        return SegmentOf(&s, reg)->ToDescriptor();
    }

    public void SetDescriptor(Reg reg, SegmentDescriptor d)
    {
        var s = GetSregs();
        if (reg == Reg.Gdtr) { s.Gdt.Base = d.Base; s.Gdt.Limit = (ushort)d.Limit; }
        else if (reg == Reg.Idtr) { s.Idt.Base = d.Base; s.Idt.Limit = (ushort)d.Limit; }
        else
        {
            SegmentOf(&s, reg)->SetDescriptor(d);
        }
        Check(Libc.Ioctl(_fd, KvmApi.SetSregs, &s), "KVM_SET_SREGS");
    }

    private static ulong* GprSlot(KvmRegs* r, Reg reg) => reg switch
    {
        Reg.Rax => &r->Rax, Reg.Rbx => &r->Rbx, Reg.Rcx => &r->Rcx, Reg.Rdx => &r->Rdx,
        Reg.Rsi => &r->Rsi, Reg.Rdi => &r->Rdi, Reg.Rsp => &r->Rsp, Reg.Rbp => &r->Rbp,
        Reg.R8 => &r->R8, Reg.R9 => &r->R9, Reg.R10 => &r->R10, Reg.R11 => &r->R11,
        Reg.R12 => &r->R12, Reg.R13 => &r->R13, Reg.R14 => &r->R14, Reg.R15 => &r->R15,
        Reg.Rip => &r->Rip, _ => &r->Rflags,
    };

    private static KvmSegment* SegmentOf(KvmSregs* s, Reg reg) => reg switch
    {
        Reg.Es => &s->Es, Reg.Cs => &s->Cs, Reg.Ss => &s->Ss, Reg.Ds => &s->Ds, Reg.Fs => &s->Fs, Reg.Gs => &s->Gs,
        Reg.Ldtr => &s->Ldt, Reg.Tr => &s->Tr,
        _ => throw new ArgumentException($"{reg} is not a segment register"),
    };

    // struct kvm_debugregs: db[4], dr6, dr7, flags, reserved[9] (128 bytes).
    private static readonly nuint GetDebugRegsIoctl = (2u << 30) | (128u << 16) | 0xAE00 | 0xa1;
    private static readonly nuint SetDebugRegsIoctl = (1u << 30) | (128u << 16) | 0xAE00 | 0xa2;

    private static int DebugIndex(Reg reg) => reg switch { Reg.Dr6 => 4, Reg.Dr7 => 5, _ => reg - Reg.Dr0 };

    private ulong[] GetDebugRegs()
    {
        var buf = new ulong[16];
        fixed (ulong* p = buf) Check(Libc.Ioctl(_fd, GetDebugRegsIoctl, p), "KVM_GET_DEBUGREGS");
        return buf;
    }

    private void SetDebugRegs(ulong[] buf)
    {
        buf[6] = 0;
        fixed (ulong* p = buf) Check(Libc.Ioctl(_fd, SetDebugRegsIoctl, p), "KVM_SET_DEBUGREGS");
    }

    public void InjectNmi() => Check(Libc.Ioctl(_fd, KvmApi.Nmi, 0), "KVM_NMI");

    // KVM has no LINT pins to raise: as api.rst says for KVM_NMI, read the local APIC, see what the LVT entry
    // asks for, and deliver that (a fixed vector as a message to this APIC, an NMI with KVM_NMI).
    private static readonly int[] LvtOffsets =
    [
        LapicRegisters.LvtLint0, LapicRegisters.LvtLint1, LapicRegisters.LvtTimer, LapicRegisters.LvtError,
        LapicRegisters.LvtPerformance, LapicRegisters.LvtThermal, LapicRegisters.LvtCmci,
    ];

    public void AssertLocalInterrupt(int lvt)
    {
        if ((uint)lvt >= (uint)LvtOffsets.Length) throw new ArgumentException($"LVT index {lvt} out of range 0-6");
        byte* page = stackalloc byte[1024];
        Check(Libc.Ioctl(_fd, KvmApi.GetLapic, page), "KVM_GET_LAPIC");
        uint entry = *(uint*)(page + LvtOffsets[lvt]);
        uint svr = *(uint*)(page + LapicRegisters.Svr);
        if ((entry & (1u << 16)) != 0 || (svr & 0x100) == 0) return; // masked, or the APIC is software-disabled
        switch ((entry >> 8) & 7)
        {
            case 0: // fixed
                uint id = *(uint*)(page + LapicRegisters.Id) >> 24;
                _vm.DeliverMsi(0xfee00000ul | (ulong)id << 12, entry & 0xff);
                break;
            case 4: // NMI
                InjectNmi();
                break;
        }
    }

    // struct kvm_vcpu_events: exception {injected, nr, has_error_code, pending, error_code} at 0,
    // interrupt {injected, nr, soft, shadow} at 8, nmi {injected, pending, masked} at 12, flags at 20.
    public (ulong Info1, ulong Info2) GetIntinfo()
    {
        byte* ev = stackalloc byte[64];
        Check(Libc.Ioctl(_fd, KvmApi.GetVcpuEvents, ev), "KVM_GET_VCPU_EVENTS");
        ulong info1 = 0, info2 = 0;
        if (ev[0] != 0 || ev[3] != 0)
        {
            info1 = ev[1] | 3u << 8 | 1u << 31; // hardware exception
            if (ev[2] != 0) info1 |= 1u << 11 | (ulong)*(uint*)(ev + 4) << 32;
        }
        if (ev[8] != 0) info2 = ev[9] | (ev[10] != 0 ? 4u : 0u) << 8 | 1u << 31;
        else if (ev[12] != 0 || ev[13] != 0) info2 = 2 | 2u << 8 | 1u << 31;
        return (info1, info2);
    }

    public void InjectException(int vector, uint errorCode = 0)
    {
        if ((uint)vector > 31 || vector == 2) throw new ArgumentException($"vector {vector} is not a hardware exception");
        byte* ev = stackalloc byte[64];
        Check(Libc.Ioctl(_fd, KvmApi.GetVcpuEvents, ev), "KVM_GET_VCPU_EVENTS");
        if (ev[0] != 0)
        {
            // An exception is already on its way: the SDM's table decides what the pair becomes.
            var r = ExceptionNesting.Combine(ev[1], vector);
            if (r.Kind == NestingKind.TripleFault)
            {
                _owner.Suspend(Hyve.Vmm.Control.SuspendHow.TripleFault);
                return;
            }
            if (r.Kind == NestingKind.DoubleFault) { vector = ExceptionNesting.DoubleFaultVector; errorCode = 0; }
        }
        new Span<byte>(ev, 64).Clear();
        ev[0] = 1;
        ev[1] = (byte)vector;
        ev[2] = ExceptionNesting.HasErrorCode(vector) ? (byte)1 : (byte)0;
        *(uint*)(ev + 4) = errorCode;
        // flags = 0: leave NMI, SIPI and interrupt-shadow state as they are.
        Check(Libc.Ioctl(_fd, KvmApi.SetVcpuEvents, ev), "KVM_SET_VCPU_EVENTS");
    }

    public DebugExitInfo LastDebugExit { get; private set; }

    // struct kvm_debug_exit_arch at the exit data: u32 exception, u32 pad, u64 pc, u64 dr6, u64 dr7.
    private void ReadDebugExit()
    {
        byte* e = _run + KvmApi.RunExitData;
        LastDebugExit = new DebugExitInfo((int)*(uint*)e, *(ulong*)(e + 8), *(ulong*)(e + 16), *(ulong*)(e + 24));
    }

    private const uint GuestDebugEnable = 1, GuestDebugSingleStep = 2, GuestDebugUseSwBp = 0x10000, GuestDebugUseHwBp = 0x20000;

    // struct kvm_guest_debug: u32 control, u32 pad, struct kvm_guest_debug_arch { u64 debugreg[8]; } (72 bytes).
    public bool SetGuestDebug(in GuestDebugSettings settings)
    {
        ulong* buf = stackalloc ulong[9];
        uint control = 0;
        if (settings.Enable)
        {
            control = GuestDebugEnable;
            if (settings.SingleStep) control |= GuestDebugSingleStep;
            if (settings.SoftwareBreakpoints) control |= GuestDebugUseSwBp;
            if (settings.HardwareBreakpoints) control |= GuestDebugUseHwBp;
        }
        buf[0] = control;
        buf[1] = settings.Dr0; buf[2] = settings.Dr1; buf[3] = settings.Dr2; buf[4] = settings.Dr3;
        buf[5] = 0; buf[6] = 0; buf[7] = 0;
        buf[8] = settings.HardwareBreakpoints ? settings.Dr7 : 0;
        return Libc.Ioctl(_fd, KvmApi.SetGuestDebug, buf) == 0;
    }

    public VcpuState GetState()
    {
        var k = new KvmVcpuState { Regs = GetRegs(), Sregs = GetSregs(), DebugRegs = GetDebugRegs() };
        fixed (byte* x = k.Xsave) Check(Libc.Ioctl(_fd, KvmApi.GetXsave, x), "KVM_GET_XSAVE");
        fixed (byte* l = k.Lapic) Check(Libc.Ioctl(_fd, KvmApi.GetLapic, l), "KVM_GET_LAPIC");
        fixed (byte* e = k.Events) Check(Libc.Ioctl(_fd, KvmApi.GetVcpuEvents, e), "KVM_GET_VCPU_EVENTS");
        uint mp;
        Check(Libc.Ioctl(_fd, KvmApi.GetMpState, &mp), "KVM_GET_MP_STATE");
        k.MpState = mp;
        byte* xcrs = stackalloc byte[392];
        new Span<byte>(xcrs, 392).Clear();
        // Hosts without XSAVE have no XCRs: XCR0 stays x87-only.
        if (Libc.Ioctl(_fd, KvmApi.GetXcrs, xcrs) == 0 && *(uint*)xcrs > 0 && *(uint*)(xcrs + 8) == 0) k.Xcr0 = *(ulong*)(xcrs + 16);
        int khz = Libc.Ioctl(_fd, KvmApi.GetTscKhz, 0);
        if (khz > 0) k.TscKhz = khz;
        var list = KvmVcpuState.SavedMsrs;
        int size = 8 + 16 * list.Length;
        byte* buf = stackalloc byte[size];
        new Span<byte>(buf, size).Clear();
        *(uint*)buf = (uint)list.Length;
        for (int i = 0; i < list.Length; i++) *(uint*)(buf + 8 + 16 * i) = list[i];
        // KVM_GET_MSRS stops at the first MSR it does not know and returns how many it read.
        int n = Libc.Ioctl(_fd, KvmApi.GetMsrs, buf);
        Check(n, "KVM_GET_MSRS");
        for (int i = 0; i < n; i++) k.Msrs[list[i]] = *(ulong*)(buf + 8 + 16 * i + 8);
        return k.ToNeutral();
    }

    public void SetState(VcpuState state)
    {
        var k = KvmVcpuState.FromNeutral(state);
        // Where the host can scale the TSC, keep the rate the guest calibrated; elsewhere the value continues at the host's rate.
        if (k.TscKhz > 0 && Libc.Ioctl(_fd, KvmApi.GetTscKhz, 0) != k.TscKhz) Libc.Ioctl(_fd, KvmApi.SetTscKhz, (nint)k.TscKhz);
        var sregs = k.Sregs;
        Check(Libc.Ioctl(_fd, KvmApi.SetSregs, &sregs), "KVM_SET_SREGS");
        var regs = k.Regs;
        Check(Libc.Ioctl(_fd, KvmApi.SetRegs, &regs), "KVM_SET_REGS");
        byte* xcrs = stackalloc byte[392];
        new Span<byte>(xcrs, 392).Clear();
        *(uint*)xcrs = 1;
        *(ulong*)(xcrs + 16) = k.Xcr0;
        Libc.Ioctl(_fd, KvmApi.SetXcrs, xcrs); // fails only on hosts without XSAVE, where XCR0 is x87 anyway
        fixed (byte* x = k.Xsave) Check(Libc.Ioctl(_fd, KvmApi.SetXsave, x), "KVM_SET_XSAVE");
        SetDebugRegs(k.DebugRegs);
        var list = new List<(uint, ulong)>(k.Msrs.Count);
        foreach (var (i, v) in k.Msrs) if (i != KvmVcpuState.MsrTscDeadline) list.Add((i, v));
        // The TSC deadline is relative to the TSC just written: it goes last.
        list.Add((KvmVcpuState.MsrTscDeadline, k.Msrs[KvmVcpuState.MsrTscDeadline]));
        int size = 8 + 16 * list.Count;
        byte* buf = stackalloc byte[size];
        new Span<byte>(buf, size).Clear();
        *(uint*)buf = (uint)list.Count;
        for (int i = 0; i < list.Count; i++) { *(uint*)(buf + 8 + 16 * i) = list[i].Item1; *(ulong*)(buf + 16 + 16 * i) = list[i].Item2; }
        int n = Libc.Ioctl(_fd, KvmApi.SetMsrs, buf);
        Check(n, "KVM_SET_MSRS");
        fixed (byte* l = k.Lapic) Check(Libc.Ioctl(_fd, KvmApi.SetLapic, l), "KVM_SET_LAPIC");
        uint mp = k.MpState;
        Check(Libc.Ioctl(_fd, KvmApi.SetMpState, &mp), "KVM_SET_MP_STATE");
        fixed (byte* e = k.Events) Check(Libc.Ioctl(_fd, KvmApi.SetVcpuEvents, e), "KVM_SET_VCPU_EVENTS");
    }

    public void Dispose()
    {
        Libc.Munmap((nint)_run, (nuint)_runSize);
        Libc.Close(_fd);
    }
}
