// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Hyve.X86;
using Xunit;
using R = Hyve.Vmm.Io.LapicRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// Issue 17 item 4 on the software CPU: CR8 is the local APIC's TPR (SDM Vol. 3 11.8.6), so raising it above a pending
/// interrupt's class holds the interrupt in the IRR and lowering it lets the interrupt through at once (the PPR is
/// re-evaluated and the vCPU signalled); a self-NMI sent through the ICR to the APIC's own ID is delivered.
/// </summary>
public sealed class LapicPriorityTests
{
    private sealed class Cpu : ILapicCpu
    {
        public int Pending, Nmis;
        public void InterruptPending() => Pending++;
        public void Nmi() => Nmis++;
        public void ExtInt() { }
        public void Init() { }
        public void Startup(int vector) { }
    }

    private readonly TestMemory _mem = new(4 << 20);

    private (InstructionEngine, Vlapic, Cpu, CpuState) Setup()
    {
        _mem.Write64(0x10000, 0x11000 | 3);
        _mem.Write64(0x11000, 0x12000 | 3);
        _mem.Write64(0x12000, 0x83);
        var sink = new Cpu();
        var bus = new LapicBus();
        var lapic = new Vlapic(0, true, new ManualClock(), bus, sink);
        bus.Add(lapic);
        lapic.MmioWrite(R.Svr, 4, 0x1ff); // software-enable
        var engine = new InstructionEngine(_mem) { TaskPriority = lapic };
        var cpu = new CpuState();
        cpu.SetFlatLongMode(0x10000);
        cpu.Rip = 0x1000;
        return (engine, lapic, sink, cpu);
    }

    private static void MovCr8(InstructionEngine e, CpuState cpu, ulong v)
    {
        cpu.Gpr[0] = v;
        cpu.Rip = 0x1000;
        Assert.True(e.Step(cpu, null, new byte[] { 0x44, 0x0f, 0x22, 0xc0 }).IsOk); // MOV CR8, RAX
    }

    [Fact]
    public void Cr8_raises_and_lowers_the_tpr_and_a_held_interrupt_is_signalled_when_it_drops()
    {
        var (engine, lapic, sink, cpu) = Setup();
        MovCr8(engine, cpu, 5);
        Assert.Equal(0x50u, (uint)lapic.MmioRead(R.Tpr, 4)); // CR8[3:0] = TPR[7:4]
        lapic.SetIrr(0x45, false);
        Assert.False(lapic.TryGetPendingInterrupt(out _)); // class 4 under TPR class 5: held in the IRR
        int before = sink.Pending;
        MovCr8(engine, cpu, 3);
        Assert.True(sink.Pending > before);                 // lowering the TPR signals the vCPU at once
        Assert.True(lapic.TryGetPendingInterrupt(out int v));
        Assert.Equal(0x45, v);
        lapic.MmioWrite(R.Tpr, 4, 0x7f);
        cpu.Rip = 0x1000;
        Assert.True(engine.Step(cpu, null, new byte[] { 0x44, 0x0f, 0x20, 0xc0 }).IsOk); // MOV RAX, CR8
        Assert.Equal(7ul, cpu.Gpr[0]);
    }

    [Fact]
    public void A_self_nmi_through_the_icr_is_delivered()
    {
        var (_, lapic, sink, _) = Setup();
        lapic.MmioWrite(R.IcrHigh, 4, 0u << 24);      // destination: this APIC's ID (0)
        lapic.MmioWrite(R.IcrLow, 4, 4u << 8);         // delivery mode NMI, physical, no shorthand
        Assert.Equal(1, sink.Nmis);
    }
}
