// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Hyve.Kvm;
using Hyve.Tests.Pci;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Hyve.Vmm.Native;
using Xunit;

namespace Hyve.Tests.Kvm;

/// <summary>MSI-X vectors through KVM_IRQFD: the ioctl and routing-table layouts of linux/kvm.h, the route table the
/// MSI-X capability sends through (masking stays in user space), and, where /dev/kvm opens, real KVM taking the routes.</summary>
public unsafe class KvmIrqFdTests
{
    [Fact]
    public void IoctlNumberAndStructLayoutMatchLinux()
    {
        // _IOW(KVMIO, 0x76, struct kvm_irqfd): direction 1, size 32, type 0xAE, number 0x76.
        Assert.Equal((nuint)0x4020_AE76, KvmApi.IrqFd);
        Assert.Equal(32, sizeof(KvmIrqFd));
        Assert.Equal(0, (int)Marshal.OffsetOf<KvmIrqFd>(nameof(KvmIrqFd.Fd)));
        Assert.Equal(4, (int)Marshal.OffsetOf<KvmIrqFd>(nameof(KvmIrqFd.Gsi)));
        Assert.Equal(8, (int)Marshal.OffsetOf<KvmIrqFd>(nameof(KvmIrqFd.Flags)));
        Assert.Equal(12, (int)Marshal.OffsetOf<KvmIrqFd>(nameof(KvmIrqFd.ResampleFd)));
        Assert.Equal(1u, KvmApi.IrqFdDeassign);
        // _IOW(KVMIO, 0x6a, struct kvm_irq_routing) with the 8-byte header as its size.
        Assert.Equal((nuint)0x4008_AE6A, KvmApi.SetGsiRouting);
    }

    [Fact]
    public void RoutingTableHoldsMsiEntriesOf48Bytes()
    {
        var buf = KvmIrqRoutes.Encode([(2u, 0xfee0_1000ul, 0x8031u), (30u, 0x1_fee0_0000ul, 0x41u)]);
        Assert.Equal(8 + 2 * 48, buf.Length);
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(buf));       // nr
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(buf.AsSpan(4))); // flags
        var e = buf.AsSpan(8 + 48);
        Assert.Equal(30u, BinaryPrimitives.ReadUInt32LittleEndian(e));        // gsi
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(e[4..]));    // KVM_IRQ_ROUTING_MSI
        Assert.Equal(0xfee0_0000u, BinaryPrimitives.ReadUInt32LittleEndian(e[16..]));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(e[20..]));   // address_hi
        Assert.Equal(0x41u, BinaryPrimitives.ReadUInt32LittleEndian(e[24..]));
    }

    private sealed class RecordingSink(bool accept = true) : IMsiRouteSink
    {
        public readonly List<(MsiRoute Route, ulong Address, uint Data)> Delivered = [];
        public int Bound, Unbound;
        public bool Accept = accept;
        public bool Bind(MsiRoute route) { Bound++; route.Binding = Bound; return true; }
        public void Unbind(MsiRoute route) => Unbound++;
        public bool Deliver(MsiRoute route, ulong address, uint data)
        {
            if (Accept) Delivered.Add((route, address, data));
            return Accept;
        }
    }

    [Fact]
    public void MsiXVectorsGoThroughTheirRoutesWhileUnmasked()
    {
        var routes = new MsiRouteTable();
        var sink = new RecordingSink();
        routes.Attach(sink);
        using var rig = new PciTestRig(routes);
        var f = new TestFunction();
        var msix = f.AddMsiX(4, barIndex: 1);
        rig.Bus.Add(f, 0, 3, 0);
        rig.Bus.Build();
        ulong bar = f.Bars[1]!.Address;
        rig.Mmio.Write(bar + 2 * 16, 8, 0xfee0_2000);
        rig.Mmio.Write(bar + 2 * 16 + 8, 4, 0x0051);
        rig.Cf8Write(0, 3, 0, msix.Offset + 2, 2, 0x8000); // MSI-X enable
        // Masked (the reset state): pending, nothing leaves.
        Assert.True(msix.Send(2));
        Assert.Empty(sink.Delivered);
        Assert.Empty(rig.Irq.Msis);
        // Unmasking delivers the pending message through the vector's route; later sends take the same route.
        rig.Mmio.Write(bar + 2 * 16 + 12, 4, 0);
        Assert.True(msix.Send(2));
        Assert.Equal(2, sink.Delivered.Count);
        Assert.All(sink.Delivered, d => Assert.Equal((0xfee0_2000ul, 0x51u), (d.Address, d.Data)));
        Assert.Same(sink.Delivered[0].Route, sink.Delivered[1].Route);
        Assert.Equal(1, routes.Count);
        Assert.Empty(rig.Irq.Msis);
        // The guest moves the vector: the route carries the new message (the sink reprograms its entry).
        rig.Mmio.Write(bar + 2 * 16 + 8, 4, 0x0052);
        msix.Send(2);
        Assert.Equal(0x52u, sink.Delivered[^1].Data);
        // A route the backend cannot use falls back to the ordinary message path.
        sink.Accept = false;
        msix.Send(2);
        Assert.Equal((0xfee0_2000ul, 0x52ul), Assert.Single(rig.Irq.Msis));
        // Detached (a reset between backends): the ordinary path; attached again, the existing route is bound again.
        sink.Accept = true;
        routes.Detach();
        Assert.Equal(1, sink.Unbound);
        msix.Send(2);
        Assert.Equal(2, rig.Irq.Msis.Count);
        var next = new RecordingSink();
        routes.Attach(next);
        Assert.Equal(1, next.Bound);
        msix.Send(2);
        Assert.Single(next.Delivered);
    }

    private sealed class NoApic : IApicBus
    {
        public void DeliverMsi(ulong address, ulong data) { }
    }

    [SkippableKvmFact]
    public void KvmTakesIrqFdsAndMsiRoutesAboveTheIoapicPins()
    {
        int vmFd = KvmSystem.Open().CreateVm();
        Assert.True(vmFd >= 0, "KVM_CREATE_VM failed");
        try
        {
            var ioapic = new Vioapic(new NoApic());
            var cap = new KvmEnableCap { Cap = KvmApi.CapSplitIrqchip };
            cap.Args[0] = (ulong)ioapic.PinCount;
            Assert.Equal(0, Libc.Ioctl(vmFd, KvmApi.EnableCap, &cap));
            var routes = new KvmIrqRoutes(vmFd, ioapic);
            Assert.True(routes.Update());
            var table = new MsiRouteTable();
            table.Attach(routes);
            var a = table.Add();
            var b = table.Add();
            var ba = Assert.IsType<KvmIrqRoutes.Binding>(a.Binding);
            var bb = Assert.IsType<KvmIrqRoutes.Binding>(b.Binding);
            Assert.Equal((uint)ioapic.PinCount, ba.Gsi);
            Assert.Equal((uint)ioapic.PinCount + 1, bb.Gsi);
            Assert.True(table.TryDeliver(a, 0xfee0_0000, 0x41));
            Assert.Contains((ba.Gsi, 0xfee0_0000ul, 0x41u), routes.Entries());
            Assert.DoesNotContain(routes.Entries(), e => e.Gsi == bb.Gsi); // not programmed until it sends
            table.Detach();
            Assert.Null(a.Binding);
            Assert.Empty(routes.Entries());
            // A freed GSI is reused by the next binding.
            table.Attach(routes);
            Assert.Contains(((KvmIrqRoutes.Binding)a.Binding!).Gsi, new[] { ba.Gsi, bb.Gsi });
            table.Detach();
        }
        finally { Libc.Close(vmFd); }
    }
}
