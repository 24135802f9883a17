// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Kvm;
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vmm.State;
using Hyve.X86;
using Xunit;

namespace Hyve.Tests.Snapshot;

/// <summary>
/// The guest's TSC across a snapshot that moves between engines: it goes on from the saved value at the saved rate
/// (the rate the guest calibrated its clocks against), whichever engine took it. KVM's side is its state conversion
/// (KVM_SET_TSC_KHZ to the saved rate, IA32_TSC to the saved value), checked without /dev/kvm.
/// </summary>
public class TscRebaseTests
{
    [Fact]
    public void A_rebased_tsc_reads_the_saved_value_then_counts_at_the_saved_rate()
    {
        const long hz = 2_500_000_000;
        long offset = HostTsc.OffsetFor(0x1234_5678_9abc, hz, hostNs: 7_000_000_000);
        Assert.Equal(0x1234_5678_9abcul, HostTsc.Value(7_000_000_000, hz, offset));
        Assert.Equal(0x1234_5678_9abcul + 2_500_000_000, HostTsc.Value(8_000_000_000, hz, offset));
        Assert.Equal(0x1234_5678_9abcul + 2_500, HostTsc.Value(7_000_001_000, hz, offset));
        // At the default 1 GHz the TSC is the host's nanoseconds plus the offset.
        Assert.Equal(5_000ul, HostTsc.Value(4_000, HostTsc.DefaultHz, 1_000));
    }

    private static (GuestMemory Mem, SoftBackend Backend, SoftVcpu Vcpu) SoftCpu()
    {
        var mem = new GuestMemory(16 << 20);
        var vm = new Vm("tsc", new CpuTopology(1, 1, 1, 1), mem, new ManualClock());
        var backend = new SoftBackend(vm);
        return (mem, backend, (SoftVcpu)backend.CreateVcpu(0));
    }

    [Fact]
    public void A_kvm_state_at_2_5_GHz_goes_on_at_2_5_GHz_on_the_software_cpu_and_comes_back_with_its_rate()
    {
        var (mem, backend, vcpu) = SoftCpu();
        using (mem)
        using (backend)
        {
            // What KVM's state converts to on a 2.5 GHz host (KvmVcpuState.ToNeutral keeps the rate it read).
            var fromKvm = vcpu.GetState();
            fromKvm.Tsc = 0x10_0000_0000;
            fromKvm.TscHz = 2_500_000_000;
            long before = HostTsc.HostNs;
            vcpu.SetState(fromKvm);
            Thread.Sleep(30);
            var s = vcpu.GetState();
            long elapsed = HostTsc.HostNs - before;
            Assert.Equal(2_500_000_000, s.TscHz);
            ulong advanced = s.Tsc - fromKvm.Tsc;
            Assert.InRange(advanced, 30_000_000ul * 25 / 10, (ulong)elapsed * 25 / 10 + 2_500);
            // Saved again here and taken to KVM: the rate KVM is asked for is the guest's, and IA32_TSC its value.
            var k = KvmVcpuState.FromNeutral(s);
            Assert.Equal(2_500_000L, k.TscKhz);
            Assert.Equal(s.Tsc, k.Msrs[KvmVcpuState.MsrTsc]);
            // A software-CPU state (1 GHz) taken to KVM asks for 1 GHz.
            var (mem2, backend2, soft) = SoftCpu();
            using (mem2)
            using (backend2)
                Assert.Equal(1_000_000L, KvmVcpuState.FromNeutral(soft.GetState()).TscKhz);
        }
    }

    [Fact]
    public void The_tsc_deadline_timer_converts_at_the_restored_rate()
    {
        var clock = new ManualClock();
        ulong tsc = 0;
        var lapic = new Hyve.Vmm.Io.Vlapic(0, true, clock, new NullBus(), readTsc: () => tsc);
        var st = lapic.Save();
        lapic.TscHz = 2_000_000_000;
        // LVT timer in TSC-deadline mode, vector 0x40, deadline 2,000,000 ticks ahead: 1 ms at 2 GHz.
        Hyve.Vmm.Io.LapicState page = new();
        st.Page.CopyTo(page.Bytes, 0);
        page[Hyve.Vmm.Io.LapicRegisters.LvtTimer] = 2u << 17 | 0x40;
        page[Hyve.Vmm.Io.LapicRegisters.Svr] = 0x1ff;
        page.Bytes.CopyTo(st.Page, 0);
        st.TscDeadline = 2_000_000;
        lapic.Restore(st);
        clock.Advance(999_000);
        tsc = 1_998_000;
        Assert.False(lapic.TryGetPendingInterrupt(out _));
        tsc = 2_000_000;
        clock.Advance(1_000);
        Assert.True(lapic.TryGetPendingInterrupt(out int v));
        Assert.Equal(0x40, v);
    }

    private sealed class NullBus : Hyve.Vmm.Io.ILapicBus
    {
        public void SendIpi(Hyve.Vmm.Io.Vlapic source, in Hyve.Vmm.Io.LapicMessage message) { }
        public void LevelEoi(Hyve.Vmm.Io.Vlapic source, int vector) { }
    }
}
