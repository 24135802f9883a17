// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.Io;
using Xunit;
using Hyve.Vmm.State;

namespace Hyve.Tests.State;

/// <summary>The inventory's order and its checks on sections.</summary>
public class DeviceInventoryTests
{
    private sealed class Probe(string name, List<string> log, int version = 2, int oldest = 1) : IDeviceState
    {
        public byte Value;
        public int LoadedVersion;
        public string StateName => name;
        public int StateVersion => version;
        public int OldestStateVersion => oldest;
        public void SaveState(BinaryWriter w) { log.Add("save " + name); w.Write(Value); }
        public void LoadState(BinaryReader r, int v) { log.Add("load " + name); LoadedVersion = v; Value = r.ReadByte(); }
    }

    [Fact]
    public void Reset_and_save_run_in_phase_order_and_restore_loads_the_interrupt_controllers_last()
    {
        var log = new List<string>();
        var inv = new DeviceInventory();
        var dev = new Probe("dev", log);
        var pic = new Probe("pic", log);
        var timer = new Probe("timer", log);
        // Added out of order on purpose: the phase decides.
        inv.Add("dev", "0", dev, DevicePhase.Platform, () => log.Add("reset dev"));
        inv.Add("pic", "0", pic, DevicePhase.InterruptControllers, () => log.Add("reset pic"));
        inv.Add("timer", "0", timer, DevicePhase.Timers, () => log.Add("reset timer"));
        inv.Reset();
        Assert.Equal(["reset pic", "reset timer", "reset dev"], log);
        log.Clear();
        dev.Value = 7;
        var saved = inv.Save();
        Assert.Equal(["save pic", "save timer", "save dev"], log);
        Assert.Equal(["pic", "timer", "dev"], saved.Select(s => s.Name));
        log.Clear();
        dev.Value = 0;
        inv.Restore(saved);
        Assert.Equal(["load dev", "load timer", "load pic"], log);
        Assert.Equal(7, dev.Value);
    }

    [Fact]
    public void A_device_re_raising_its_line_while_loading_leaves_the_saved_line_count()
    {
        // The IOAPIC saved pin 5 held by one source; the device re-raises it on load (into the fresh IOAPIC), and the
        // IOAPIC loaded afterwards puts back exactly one.
        var apic = new Hyve.Tests.Io1.RecordingApic();
        var io = new Vioapic(apic);
        io.Assert(5);
        var saved = new List<StateSection> { DeviceInventory.SaveOne(io, "0") };
        var io2 = new Vioapic(new Hyve.Tests.Io1.RecordingApic());
        var inv = new DeviceInventory();
        inv.Add("vioapic", "0", io2, DevicePhase.InterruptControllers);
        var raiser = new Raiser(() => io2.Assert(5));
        inv.Add("raiser", "0", raiser, DevicePhase.Platform);
        saved.Add(DeviceInventory.SaveOne(raiser, "0"));
        inv.Restore(saved);
        Assert.Equal(1, io2.AssertCount(5));
    }

    private sealed class Raiser(Action raise) : IDeviceState
    {
        public string StateName => "raiser";
        public int StateVersion => 1;
        public int OldestStateVersion => 1;
        public void SaveState(BinaryWriter w) => w.Write(true);
        public void LoadState(BinaryReader r, int version) { if (r.ReadBoolean()) raise(); }
    }

    [Fact]
    public void Every_version_from_oldest_to_newest_loads_and_others_are_refused_by_name()
    {
        var p = new Probe("p", []);
        DeviceInventory.LoadOne(p, new StateSection("p", "0", 1, 1, [1]));
        Assert.Equal(1, p.LoadedVersion);
        DeviceInventory.LoadOne(p, new StateSection("p", "0", 2, 1, [1]));
        Assert.Equal(2, p.LoadedVersion);
        var e = Assert.Throws<InvalidDataException>(() => DeviceInventory.LoadOne(p, new StateSection("p", "0", 3, 1, [1])));
        Assert.Contains("p/0 has version 3", e.Message);
        Assert.Throws<InvalidDataException>(() => DeviceInventory.LoadOne(p, new StateSection("p", "0", 0, 0, [1])));
        Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => DeviceInventory.LoadOne(p, new StateSection("p", "0", 2, 1, []))).Message);
        Assert.Contains("did not read", Assert.Throws<InvalidDataException>(() => DeviceInventory.LoadOne(p, new StateSection("p", "0", 2, 1, [1, 2]))).Message);
    }

    [Fact]
    public void A_missing_or_unknown_section_is_refused_naming_the_device()
    {
        var inv = new DeviceInventory();
        inv.Add("a", "com1", new Probe("a", []), DevicePhase.Platform);
        Assert.Contains("no state for device a/com1", Assert.Throws<InvalidDataException>(() => inv.Restore([])).Message);
        var extra = new List<StateSection> { new("a", "com1", 1, 1, [0]), new("b", "0", 1, 1, [0]) };
        Assert.Contains("b/0, which this machine lacks", Assert.Throws<InvalidDataException>(() => inv.Restore(extra)).Message);
        Assert.Throws<InvalidOperationException>(() => inv.Add("a", "com1", new Probe("a", []), DevicePhase.Platform));
    }
}
