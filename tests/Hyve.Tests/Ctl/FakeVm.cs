// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Control;
using Hyve.X86;

using Xunit;

namespace Hyve.Tests.Ctl;

/// <summary>An IVmControl with fixed state, as a freshly reset 4-vCPU VM would show it.</summary>
internal sealed class FakeVm : IVmControl
{
    private readonly Dictionary<(int, Reg), ulong> _regs = new();
    private readonly Dictionary<(int, Reg), SegmentDescriptor> _descs = new();
    private readonly object _lock = new();

    public FakeVm(string name)
    {
        Name = name;
        for (int cpu = 0; cpu < CpuCount; cpu++)
        {
            // x86 reset state (SDM Vol. 3 §9.1.1).
            _regs[(cpu, Reg.Rip)] = 0xfff0;
            _regs[(cpu, Reg.Rflags)] = 0x2;
            _regs[(cpu, Reg.Cr0)] = 0x60000010;
            _regs[(cpu, Reg.Rdx)] = 0x600;
            _regs[(cpu, Reg.Dr6)] = 0xffff0ff0;
            _regs[(cpu, Reg.Dr7)] = 0x400;
            _regs[(cpu, Reg.Cs)] = 0xf000;
            _descs[(cpu, Reg.Cs)] = new SegmentDescriptor(0xffff0000, 0xffff, 0x9b);
            foreach (Reg r in new[] { Reg.Ds, Reg.Es, Reg.Fs, Reg.Gs, Reg.Ss })
                _descs[(cpu, r)] = new SegmentDescriptor(0, 0xffff, 0x93);
            _descs[(cpu, Reg.Tr)] = new SegmentDescriptor(0, 0xffff, 0x8b);
            _descs[(cpu, Reg.Ldtr)] = new SegmentDescriptor(0, 0xffff, 0x82);
            _descs[(cpu, Reg.Gdtr)] = new SegmentDescriptor(0, 0xffff, 0);
            _descs[(cpu, Reg.Idtr)] = new SegmentDescriptor(0, 0xffff, 0);
        }
    }

    public string Name { get; }
    public CpuTopology Topology => new(2, 2, 1, 4);
    public int CpuCount => 4;
    public List<int> Active { get; } = [0, 1];
    public List<int> Suspended { get; } = [];
    public List<SuspendHow> Suspends { get; } = [];

    public List<MemSegInfo> Segs { get; } =
    [
        new(0, 256UL << 20, true, ""),
        new(1, 2UL << 20, false, "bootrom"),
    ];

    public List<MemMapInfo> Maps { get; } =
    [
        new(0xffe00000, 2UL << 20, 1, 0, 5),
        new(0, 256UL << 20, 0, 0, 7),
    ];

    public IReadOnlyList<int> ActiveCpus() => Active;
    public IReadOnlyList<int> SuspendedCpus() => Suspended;
    public IReadOnlyList<MemSegInfo> MemSegs() => Segs;
    public IReadOnlyList<MemMapInfo> MemMap() => Maps;

    private void Check(int vcpu)
    {
        if (vcpu < 0 || vcpu >= CpuCount)
            throw new ArgumentOutOfRangeException(nameof(vcpu), $"vcpu {vcpu} does not exist");
    }

    public ulong GetRegister(int vcpu, Reg reg)
    {
        Check(vcpu);
        lock (_lock)
            return _regs.TryGetValue((vcpu, reg), out ulong v) ? v : 0;
    }

    public void SetRegister(int vcpu, Reg reg, ulong value)
    {
        Check(vcpu);
        lock (_lock)
            _regs[(vcpu, reg)] = value;
    }

    public SegmentDescriptor GetDescriptor(int vcpu, Reg reg)
    {
        Check(vcpu);
        if (reg < Reg.Es)
            throw new ArgumentException($"{reg} has no descriptor");
        lock (_lock)
            return _descs[(vcpu, reg)];
    }

    public void SetDescriptor(int vcpu, Reg reg, SegmentDescriptor desc)
    {
        Check(vcpu);
        if (reg < Reg.Es)
            throw new ArgumentException($"{reg} has no descriptor");
        lock (_lock)
            _descs[(vcpu, reg)] = desc;
    }

    public void Suspend(SuspendHow how)
    {
        lock (_lock)
            Suspends.Add(how);
    }

    /// <summary>The RTC's time in Unix seconds: 2025-11-25 13:00:00 UTC.</summary>
    public long RtcTime { get; set; } = 1764075600;

    /// <summary>The RTC's 128 bytes; offsets 0x00-0x0D are time and control registers the control socket may not touch.</summary>
    public byte[] Nvram { get; } = new byte[128];

    public List<int> Nmis { get; } = [];
    public List<(int Vcpu, int Lvt)> LvtAsserts { get; } = [];
    public Dictionary<int, (ulong, ulong)> Intinfo { get; } = new();

    public long GetRtcTime()
    {
        lock (_lock)
            return RtcTime;
    }

    public void SetRtcTime(long unixSeconds)
    {
        lock (_lock)
            RtcTime = unixSeconds;
    }

    // As IVmControl says (and Vrtc does): time and control registers and offsets past 127 are refused.
    private static void CheckNvram(int offset)
    {
        if (offset < 0x0e || offset >= 128)
            throw new ArgumentException($"RTC offset 0x{offset:x} is not NVRAM", nameof(offset));
    }

    public byte GetRtcNvram(int offset)
    {
        // Every byte reads (bhyve's vrtc_nvram_read); only writes are refused below 0x0E.
        if ((uint)offset >= 128) throw new ArgumentException($"RTC offset 0x{offset:x} out of range", nameof(offset));
        lock (_lock)
            return Nvram[offset];
    }

    public void SetRtcNvram(int offset, byte value)
    {
        CheckNvram(offset);
        lock (_lock)
            Nvram[offset] = value;
    }

    public void InjectNmi(int vcpu)
    {
        Check(vcpu);
        lock (_lock)
            Nmis.Add(vcpu);
    }

    public void AssertLapicLvt(int vcpu, int lvt)
    {
        if (vcpu != -1)
            Check(vcpu);
        if ((uint)lvt > 6)
            throw new ArgumentException($"LVT index {lvt} out of range 0-6");
        lock (_lock)
            LvtAsserts.Add((vcpu, lvt));
    }

    /// <summary>Checkpoint requests received: path and whether the VM was to end.</summary>
    public List<(string Path, bool ThenExit)> Checkpoints { get; } = [];

    /// <summary>Dump requests received.</summary>
    public List<string> Dumps { get; } = [];

    public void Checkpoint(string path, bool thenExit)
    {
        lock (_lock) Checkpoints.Add((path, thenExit));
    }

    public void DumpGuestMemory(string path)
    {
        lock (_lock) Dumps.Add(path);
    }

    public (ulong Info1, ulong Info2) GetIntinfo(int vcpu)
    {
        Check(vcpu);
        lock (_lock)
            return Intinfo.TryGetValue(vcpu, out var i) ? i : (0, 0);
    }
}
