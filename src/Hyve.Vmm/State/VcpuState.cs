// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Io;
using Hyve.X86;

namespace Hyve.Vmm.State;

/// <summary>What a vCPU is doing, in an engine-neutral form (KVM's mp_state, the software CPU's flags).</summary>
public enum VcpuActivity : byte
{
    /// <summary>Executing.</summary>
    Running,
    /// <summary>In HLT until an interrupt, NMI or INIT.</summary>
    Halted,
    /// <summary>An application processor (or a CPU after INIT) waiting for a start-up IPI.</summary>
    WaitingForSipi,
}

/// <summary>
/// The whole architectural state of one vCPU in one engine-neutral form, as both backends read and write it
/// (<see cref="IVcpuBackend.GetState"/>, <see cref="IVcpuBackend.SetState"/>) and as a snapshot stores it (section
/// <c>vcpu</c>, instance = vCPU id): registers, segments with their hidden parts, control and debug registers, the
/// SYSCALL/SYSENTER MSRs, PAT and TSC_AUX (all in <see cref="Cpu"/>), the x87/SSE image (<see cref="CpuState.Fx"/>),
/// XCR0 and the upper halves of the YMM registers, the other MSRs by index, the TSC, the local APIC in Hyve's
/// <see cref="VlapicState"/> (the KVM register-page layout), and the pending events.
/// </summary>
public sealed class VcpuState : IDeviceState
{
    /// <summary>Registers, segments, control/debug registers, architectural MSRs, the FXSAVE image and the interrupt shadow.</summary>
    public CpuState Cpu { get; } = new();
    /// <summary>XCR0 (x87 only, 1, when the engine has no XSAVE).</summary>
    public ulong Xcr0 { get; set; } = 1;
    /// <summary>Bits 255:128 of YMM0-YMM15 (the XSAVE AVX component, 16 x 16 bytes).</summary>
    public byte[] YmmHigh { get; } = new byte[256];
    /// <summary>Other MSRs the engine keeps (MTRRs, IA32_MISC_ENABLE, ...), by index.</summary>
    public SortedDictionary<uint, ulong> Msrs { get; } = [];
    /// <summary>The guest's TSC when the state was taken.</summary>
    public ulong Tsc { get; set; }
    /// <summary>Its rate in Hz (the software CPU counts nanoseconds: 1 GHz).</summary>
    public long TscHz { get; set; } = 1_000_000_000;
    /// <summary>The local APIC.</summary>
    public VlapicState Lapic { get; set; } = new();
    /// <summary>Running, halted or waiting for SIPI.</summary>
    public VcpuActivity Activity { get; set; }
    /// <summary>An NMI is waiting to be delivered.</summary>
    public bool NmiPending { get; set; }
    /// <summary>NMIs are blocked (an NMI handler runs until its IRET).</summary>
    public bool NmiMasked { get; set; }
    /// <summary>An exception to deliver before the next instruction, or null.</summary>
    public PendingException? Exception { get; set; }
    /// <summary>An external interrupt already taken from its controller but not yet delivered (KVM's injected
    /// interrupt), or -1.</summary>
    public int InjectedInterrupt { get; set; } = -1;

    /// <inheritdoc/>
    public string StateName => "vcpu";
    /// <inheritdoc/>
    public int StateVersion => 1;
    /// <inheritdoc/>
    public int OldestStateVersion => 1;

    /// <inheritdoc/>
    public void SaveState(BinaryWriter w)
    {
        var c = Cpu;
        foreach (ulong g in c.Gpr) w.Write(g);
        w.Write(c.Rip);
        w.Write(c.Rflags);
        foreach (var s in c.Segs) WriteSegment(w, s);
        WriteDescriptor(w, c.Gdtr);
        WriteDescriptor(w, c.Idtr);
        WriteSegment(w, c.Ldtr);
        WriteSegment(w, c.Tr);
        w.Write(c.Cr0); w.Write(c.Cr2); w.Write(c.Cr3); w.Write(c.Cr4); w.Write(c.Cr8); w.Write(c.Efer);
        foreach (ulong d in c.Dr) w.Write(d);
        w.Write(c.KernelGsBase); w.Write(c.Pkru);
        w.Write(c.Star); w.Write(c.Lstar); w.Write(c.Cstar); w.Write(c.Sfmask);
        w.Write(c.SysenterCs); w.Write(c.SysenterEsp); w.Write(c.SysenterEip);
        w.Write(c.TscAux); w.Write(c.Pat);
        w.Write(c.InterruptShadow);
        w.Write(c.Fx);
        w.Write(Xcr0);
        w.Write(YmmHigh);
        w.Write(Msrs.Count);
        foreach (var (k, v) in Msrs) { w.Write(k); w.Write(v); }
        w.Write(Tsc);
        w.Write(TscHz);
        w.Write(Lapic.ApicBase);
        w.Write(Lapic.TscDeadline);
        w.Write(Lapic.Page);
        w.Write((byte)Activity);
        w.Write(NmiPending);
        w.Write(NmiMasked);
        w.Write(Exception.HasValue);
        var e = Exception.GetValueOrDefault();
        w.Write(e.Vector); w.Write(e.HasErrorCode); w.Write(e.ErrorCode); w.Write(e.Cr2);
        w.Write(InjectedInterrupt);
    }

    /// <inheritdoc/>
    public void LoadState(BinaryReader r, int version)
    {
        var c = Cpu;
        for (int i = 0; i < 16; i++) c.Gpr[i] = r.ReadUInt64();
        c.Rip = r.ReadUInt64();
        c.Rflags = (r.ReadUInt64() & 0x3F_7FD7) | 2; // reserved bits as hardware holds them
        for (int i = 0; i < 6; i++) c.Segs[i] = ReadSegment(r);
        c.Gdtr = ReadDescriptor(r);
        c.Idtr = ReadDescriptor(r);
        c.Ldtr = ReadSegment(r);
        c.Tr = ReadSegment(r);
        c.Cr0 = r.ReadUInt64(); c.Cr2 = r.ReadUInt64(); c.Cr3 = r.ReadUInt64(); c.Cr4 = r.ReadUInt64(); c.Cr8 = r.ReadUInt64() & 0xf;
        c.Efer = r.ReadUInt64();
        for (int i = 0; i < 8; i++) c.Dr[i] = r.ReadUInt64();
        c.KernelGsBase = r.ReadUInt64(); c.Pkru = r.ReadUInt32();
        c.Star = r.ReadUInt64(); c.Lstar = r.ReadUInt64(); c.Cstar = r.ReadUInt64(); c.Sfmask = r.ReadUInt64();
        c.SysenterCs = r.ReadUInt64(); c.SysenterEsp = r.ReadUInt64(); c.SysenterEip = r.ReadUInt64();
        c.TscAux = r.ReadUInt64(); c.Pat = r.ReadUInt64();
        c.InterruptShadow = (byte)(r.ReadByte() & (CpuState.ShadowMovSs | CpuState.ShadowSti));
        ReadExactly(r, c.Fx);
        Xcr0 = r.ReadUInt64();
        ReadExactly(r, YmmHigh);
        int n = r.ReadInt32();
        if (n < 0 || n > 4096) throw new InvalidDataException($"vCPU state lists {n} MSRs");
        Msrs.Clear();
        for (int i = 0; i < n; i++) Msrs[r.ReadUInt32()] = r.ReadUInt64();
        Tsc = r.ReadUInt64();
        TscHz = r.ReadInt64();
        if (TscHz is < 1_000_000 or > 100_000_000_000) throw new InvalidDataException($"vCPU state has a TSC of {TscHz} Hz");
        Lapic = new VlapicState { ApicBase = r.ReadUInt64(), TscDeadline = r.ReadUInt64() };
        ReadExactly(r, Lapic.Page);
        byte activity = r.ReadByte();
        if (activity > (byte)VcpuActivity.WaitingForSipi) throw new InvalidDataException($"vCPU state has activity {activity}");
        Activity = (VcpuActivity)activity;
        NmiPending = r.ReadBoolean();
        NmiMasked = r.ReadBoolean();
        bool hasException = r.ReadBoolean();
        var e = new PendingException(r.ReadByte(), r.ReadBoolean(), r.ReadUInt32(), r.ReadUInt64());
        if (hasException && e.Vector >= 32) throw new InvalidDataException($"vCPU state has pending exception vector {e.Vector}");
        Exception = hasException ? e : null;
        int injected = r.ReadInt32();
        if (injected is < -1 or > 255) throw new InvalidDataException($"vCPU state has injected interrupt {injected}");
        InjectedInterrupt = injected;
    }

    private static void ReadExactly(BinaryReader r, byte[] into)
    {
        if (r.Read(into, 0, into.Length) != into.Length) throw new EndOfStreamException();
    }

    private static void WriteSegment(BinaryWriter w, SegmentRegister s)
    {
        w.Write(s.Selector);
        WriteDescriptor(w, s.Descriptor);
    }

    private static SegmentRegister ReadSegment(BinaryReader r) => new(r.ReadUInt16(), ReadDescriptor(r));

    private static void WriteDescriptor(BinaryWriter w, SegmentDescriptor d)
    {
        w.Write(d.Base);
        w.Write(d.Limit);
        w.Write(d.Access);
    }

    private static SegmentDescriptor ReadDescriptor(BinaryReader r) => new(r.ReadUInt64(), r.ReadUInt32(), r.ReadUInt32() & 0x1_F0FF);
}
