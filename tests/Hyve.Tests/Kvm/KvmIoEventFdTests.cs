// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.Kvm;
using Hyve.Tests.Virtio;
using Hyve.Virtio;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Kvm;

/// <summary>The KVM_IOEVENTFD glue (linux/kvm.h) and the doorbell table virtio devices fill; KVM itself cannot run here.</summary>
public unsafe class KvmIoEventFdTests
{
    [Fact]
    public void IoctlNumberAndStructLayoutMatchLinux()
    {
        // _IOW(KVMIO, 0x79, struct kvm_ioeventfd): direction 1, size 64, type 0xAE, number 0x79.
        Assert.Equal((nuint)0x4040_AE79, KvmApi.IoEventFd);
        Assert.Equal(64, sizeof(KvmIoEventFd));
        Assert.Equal(0, (int)Marshal.OffsetOf<KvmIoEventFd>(nameof(KvmIoEventFd.DataMatch)));
        Assert.Equal(8, (int)Marshal.OffsetOf<KvmIoEventFd>(nameof(KvmIoEventFd.Addr)));
        Assert.Equal(16, (int)Marshal.OffsetOf<KvmIoEventFd>(nameof(KvmIoEventFd.Len)));
        Assert.Equal(20, (int)Marshal.OffsetOf<KvmIoEventFd>(nameof(KvmIoEventFd.Fd)));
        Assert.Equal(24, (int)Marshal.OffsetOf<KvmIoEventFd>(nameof(KvmIoEventFd.Flags)));
    }

    [Fact]
    public void EntriesBecomeIoctlArguments()
    {
        var pio = KvmIoEventFd.From(new IoEventFd(0xc010, 2, true, 1, 42), assign: true);
        Assert.Equal((0xc010ul, 2u, 42, 1ul, 3u), (pio.Addr, pio.Len, pio.Fd, pio.DataMatch, pio.Flags)); // DATAMATCH | PIO
        var mmio = KvmIoEventFd.From(new IoEventFd(0x8_0000_3004, 0, false, null, 7), assign: false);
        Assert.Equal((0x8_0000_3004ul, 0u, 7, 0ul, 4u), (mmio.Addr, mmio.Len, mmio.Fd, mmio.DataMatch, mmio.Flags)); // DEASSIGN
    }

    [Fact]
    public void TableReplaysOnAttachAndDeassignsOnDetach()
    {
        var t = new IoEventFdTable();
        var log = new List<(IoEventFd, bool)>();
        var a = new IoEventFd(0x1000, 0, false, null, 5);
        t.Add(a);
        t.Attach((e, assign) => { log.Add((e, assign)); return true; });
        var b = new IoEventFd(0x2000, 2, true, 0, 6);
        t.Add(b);
        t.Remove(a);
        t.Detach();
        Assert.Equal([(a, true), (b, true), (a, false), (b, false)], log);
    }

    [Fact]
    public void VirtioNotifyAddressesFollowTheirBars()
    {
        var table = new IoEventFdTable();
        using var memory = new GuestMemory(16ul << 20);
        var irq = new Hyve.Tests.Pci.RecordingIrq();
        var bus = new Hyve.Pci.PciBus(new PortBus(), new MmioBus(), memory, () => irq) { IoEventFds = table };
        bus.AddFromConfig([new Hyve.Pci.PciSlotConfig(0, 3, 0, "virtio-rnd", new Dictionary<string, string>())], Hyve.Pci.PciDeviceRegistry.CreateDefault());
        bus.Build();
        var dev = (VirtioPciDevice)bus.Find(0, 3, 0)!;
        try
        {
            var modern = dev.Bars[VirtioPciDevice.ModernBar]!;
            var legacy = dev.Bars[VirtioPciDevice.LegacyBar]!;
            int fd = dev.Queues[0].NotifyFd;
            Assert.Contains(new IoEventFd(modern.Address + VirtioPciDevice.NotifyOffset, 0, false, null, fd), table.Entries);
            Assert.Contains(new IoEventFd(legacy.Address + 0x10, 2, true, 0, fd), table.Entries);
            // The guest turns memory decoding off: the MMIO doorbell goes, the port one stays.
            dev.WriteConfig(0x04, 2, Hyve.Pci.PciDevice.CommandIo);
            Assert.DoesNotContain(table.Entries, e => !e.Pio);
            Assert.Contains(table.Entries, e => e.Pio);
        }
        finally { dev.Dispose(); }
        Assert.Empty(table.Entries);
    }
}
