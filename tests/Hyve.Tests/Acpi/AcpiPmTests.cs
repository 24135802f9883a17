// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Tests.State;
using Hyve.Vmm.State;
using Hyve.Devices;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Acpi;

/// <summary>The PM1 event and control blocks against ACPI 6.x 4.8.3 (fixed hardware registers).</summary>
public class AcpiPmTests
{
    private sealed class Lines : IIrqLines
    {
        public readonly int[] Level = new int[16];
        public void IsaAssert(int irq) => Level[irq]++;
        public void IsaDeassert(int irq) => Level[irq]--;
        public void PicAssert(int irq) { }
        public void PicDeassert(int irq) { }
        public void IsaPulse(int irq) { }
        public void IoapicAssert(int pin) { }
        public void IoapicDeassert(int pin) { }
        public void IoapicPulse(int pin) { }
        public void Msi(ulong address, ulong data) { }
    }

    private const ushort Sts = 0x400, En = 0x402, Cnt = 0x404;

    private static (AcpiPm Pm, Lines Irq, PortBus Bus, Func<int> Offs) Make()
    {
        var irq = new Lines();
        int offs = 0;
        var pm = new AcpiPm(irq, () => offs++);
        var bus = new PortBus();
        pm.Register(bus);
        return (pm, irq, bus, () => offs);
    }

    [Fact]
    public void Sci_en_always_reads_set_so_acpi_is_enabled_without_an_smi_port()
    {
        var (_, _, bus, _) = Make();
        Assert.Equal(1u, bus.Read(Cnt, 2) & 1);
        bus.Write(Cnt, 2, 0);
        Assert.Equal(1u, bus.Read(Cnt, 2) & 1);
    }

    [Fact]
    public void Writing_slp_typ_5_with_slp_en_powers_off()
    {
        var (_, _, bus, offs) = Make();
        bus.Write(Cnt, 2, 5 << 10);          // SLP_TYP alone does nothing
        Assert.Equal(0, offs());
        Assert.Equal(5u, (bus.Read(Cnt, 2) >> 10) & 7);
        bus.Write(Cnt, 2, (5 << 10) | (1 << 13));
        Assert.Equal(1, offs());
        Assert.Equal(0u, bus.Read(Cnt, 2) & (1 << 13)); // SLP_EN is write-only
    }

    [Fact]
    public void Other_sleep_types_do_not_power_off()
    {
        var (_, _, bus, offs) = Make();
        bus.Write(Cnt, 2, (1 << 10) | (1 << 13));
        bus.Write(Cnt, 2, (3 << 10) | (1 << 13));
        Assert.Equal(0, offs());
    }

    [Fact]
    public void Byte_writes_of_the_high_control_byte_also_power_off()
    {
        var (_, _, bus, offs) = Make();
        bus.Write(Cnt + 1, 1, (5 << 2) | (1 << 5));
        Assert.Equal(1, offs());
    }

    [Fact]
    public void Power_button_sets_status_and_raises_sci_only_when_enabled()
    {
        var (pm, irq, bus, _) = Make();
        Assert.False(pm.PressPowerButton());
        Assert.Equal(0x100u, bus.Read(Sts, 2) & 0x100);
        Assert.Equal(0, irq.Level[9]);

        bus.Write(En, 2, 0x100);                 // PWRBTN_EN with the status pending: the SCI rises
        Assert.Equal(1, irq.Level[9]);
        Assert.True(pm.SciAsserted);
        Assert.Equal(0x100u, bus.Read(En, 2));
    }

    [Fact]
    public void Writing_one_clears_status_and_lowers_sci()
    {
        var (pm, irq, bus, _) = Make();
        bus.Write(En, 2, 0x100);
        Assert.True(pm.PressPowerButton());
        Assert.Equal(1, irq.Level[9]);
        bus.Write(Sts, 2, 0);                    // writing 0 leaves it
        Assert.Equal(0x100u, bus.Read(Sts, 2) & 0x100);
        Assert.Equal(1, irq.Level[9]);
        bus.Write(Sts, 2, 0x100);                // W1C
        Assert.Equal(0u, bus.Read(Sts, 2) & 0x100);
        Assert.Equal(0, irq.Level[9]);
        Assert.False(pm.SciAsserted);
    }

    [Fact]
    public void Disabling_the_event_lowers_sci_and_a_dword_access_covers_status_and_enable()
    {
        var (pm, irq, bus, _) = Make();
        bus.Write(Sts, 4, 0x0100_0000);          // PM1_EN.PWRBTN_EN through the upper half
        pm.PressPowerButton();
        Assert.Equal(0x0100_0100u, bus.Read(Sts, 4));
        bus.Write(En, 2, 0);
        Assert.Equal(0, irq.Level[9]);
    }

    [Fact]
    public void Save_and_restore_keep_registers_and_the_sci_level()
    {
        var (pm, _, bus, _) = Make();
        bus.Write(En, 2, 0x100);
        pm.PressPowerButton();
        bus.Write(Cnt, 2, 5 << 10);
        var s = StateCopy.Save(pm);

        var (pm2, irq2, bus2, _) = Make();
        StateCopy.Load(pm2, s);
        Assert.Equal(1, irq2.Level[9]);
        Assert.Equal(0x100u, bus2.Read(Sts, 2));
        Assert.Equal((5u << 10) | 1, bus2.Read(Cnt, 2));
        pm2.Reset();
        Assert.Equal(0, irq2.Level[9]);
        Assert.Throws<InvalidDataException>(() => StateCopy.Load(pm2, s with { Version = 99 }));
    }
}
