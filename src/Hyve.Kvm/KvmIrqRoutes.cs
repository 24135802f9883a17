// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Vmm;
using Hyve.Vmm.Io;
using Hyve.Vmm.Native;

namespace Hyve.Kvm;

/// <summary>
/// The KVM VM's GSI routing table (KVM_SET_GSI_ROUTING, which replaces the whole table each time). With the split
/// irqchip, GSIs below the IOAPIC's pin count carry each pin's redirection entry in MSI form (KVM reads them to know
/// which vectors are level-triggered and must exit with KVM_EXIT_IOAPIC_EOI). The GSIs above carry the devices' MSI-X
/// vectors: each <see cref="MsiRoute"/> gets a GSI and an eventfd registered with KVM_IRQFD, so the device's I/O thread
/// interrupts the guest by writing the eventfd, and KVM injects the route's message without a KVM_SIGNAL_MSI ioctl.
/// </summary>
internal sealed unsafe class KvmIrqRoutes : IMsiRouteSink
{
    /// <summary>Bytes of one struct kvm_irq_routing_entry.</summary>
    public const int EntrySize = 48;
    /// <summary>KVM_IRQ_ROUTING_MSI.</summary>
    public const uint RoutingMsi = 2;
    // KVM_MAX_IRQ_ROUTES on x86 is 4096; stay well inside it.
    private const uint MaxGsi = 1024;

    private readonly int _vmFd;
    private readonly Vioapic _ioapic;
    private readonly object _gate = new();
    private readonly Stack<uint> _freeGsis = new();
    private readonly Dictionary<uint, Binding> _msi = [];
    private uint _nextGsi;

    /// <summary>Takes the table of the VM <paramref name="vmFd"/>, whose IOAPIC routes come from <paramref name="ioapic"/>.</summary>
    public KvmIrqRoutes(int vmFd, Vioapic ioapic)
    {
        _vmFd = vmFd;
        _ioapic = ioapic;
        _nextGsi = (uint)ioapic.PinCount;
    }

    /// <summary>A route's state on KVM: its GSI, its eventfd and the message its routing entry holds (none yet when
    /// <see cref="Programmed"/> is false).</summary>
    public sealed class Binding(uint gsi, int fd)
    {
        /// <summary>The GSI.</summary>
        public uint Gsi { get; } = gsi;
        /// <summary>The eventfd KVM watches.</summary>
        public int Fd { get; } = fd;
        /// <summary>The message the routing entry holds.</summary>
        public ulong Address;
        /// <summary>The message the routing entry holds.</summary>
        public uint Data;
        /// <summary>True once the routing entry exists.</summary>
        public bool Programmed;
    }

    /// <summary>struct kvm_irq_routing for (gsi, address, data) MSI entries: u32 nr, u32 flags, then 48-byte entries
    /// { u32 gsi; u32 type; u32 flags; u32 pad; u32 address_lo, address_hi, data, devid; pad }.</summary>
    public static byte[] Encode(IReadOnlyList<(uint Gsi, ulong Address, uint Data)> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var buf = new byte[8 + EntrySize * entries.Count];
        BinaryPrimitives.WriteUInt32LittleEndian(buf, (uint)entries.Count);
        for (int i = 0; i < entries.Count; i++)
        {
            var e = buf.AsSpan(8 + EntrySize * i);
            BinaryPrimitives.WriteUInt32LittleEndian(e, entries[i].Gsi);
            BinaryPrimitives.WriteUInt32LittleEndian(e[4..], RoutingMsi);
            BinaryPrimitives.WriteUInt32LittleEndian(e[16..], (uint)entries[i].Address);
            BinaryPrimitives.WriteUInt32LittleEndian(e[20..], (uint)(entries[i].Address >> 32));
            BinaryPrimitives.WriteUInt32LittleEndian(e[24..], entries[i].Data);
        }
        return buf;
    }

    /// <summary>The entries the table holds now: the IOAPIC pins that have a route, then the programmed MSI routes.</summary>
    public List<(uint Gsi, ulong Address, uint Data)> Entries()
    {
        var list = new List<(uint, ulong, uint)>();
        for (int pin = 0; pin < _ioapic.PinCount; pin++)
            if (_ioapic.TryGetRoute(pin, out ulong address, out uint data)) list.Add(((uint)pin, address, data));
        lock (_gate)
            foreach (var b in _msi.Values)
                if (b.Programmed) list.Add((b.Gsi, b.Address, b.Data));
        return list;
    }

    /// <summary>Writes the whole table to KVM (after an IOAPIC entry or an MSI route changed).</summary>
    public bool Update()
    {
        // Built and written under one lock, so two updates cannot land in the wrong order. (The IOAPIC raises
        // EntryChanged outside its own lock, which is taken briefly inside: no lock-order cycle.)
        lock (_gate)
        {
            var buf = Encode(Entries());
            fixed (byte* p = buf) return Libc.Ioctl(_vmFd, KvmApi.SetGsiRouting, p) == 0;
        }
    }

    /// <inheritdoc/>
    public bool Bind(MsiRoute route)
    {
        ArgumentNullException.ThrowIfNull(route);
        lock (_gate)
        {
            uint gsi = _freeGsis.Count > 0 ? _freeGsis.Pop() : _nextGsi;
            if (gsi >= MaxGsi) return false;
            int fd = Libc.EventFd(0, Libc.EfdCloexec | Libc.EfdNonblock);
            if (fd < 0) return false;
            var arg = new KvmIrqFd { Fd = fd, Gsi = gsi };
            if (Libc.Ioctl(_vmFd, KvmApi.IrqFd, &arg) != 0)
            {
                Libc.Close(fd);
                return false; // no KVM_IRQFD: the route stays unbound and messages go through KVM_SIGNAL_MSI
            }
            if (gsi == _nextGsi) _nextGsi++;
            var b = new Binding(gsi, fd);
            _msi[gsi] = b;
            route.Binding = b;
            return true;
        }
    }

    /// <inheritdoc/>
    public void Unbind(MsiRoute route)
    {
        ArgumentNullException.ThrowIfNull(route);
        if (route.Binding is not Binding b) return;
        lock (_gate)
        {
            var arg = new KvmIrqFd { Fd = b.Fd, Gsi = b.Gsi, Flags = KvmApi.IrqFdDeassign };
            Libc.Ioctl(_vmFd, KvmApi.IrqFd, &arg);
            Libc.Close(b.Fd);
            _msi.Remove(b.Gsi);
            _freeGsis.Push(b.Gsi);
        }
        route.Binding = null;
    }

    /// <inheritdoc/>
    public bool Deliver(MsiRoute route, ulong address, uint data)
    {
        ArgumentNullException.ThrowIfNull(route);
        if (route.Binding is not Binding b) return false;
        if (!b.Programmed || b.Address != address || b.Data != data)
        {
            // The guest reprogrammed the vector (rare: at driver start and on CPU affinity changes).
            lock (_gate)
            {
                (b.Address, b.Data, b.Programmed) = (address, data, true);
                if (!Update())
                {
                    b.Programmed = false;
                    return false;
                }
            }
        }
        ulong one = 1;
        return Libc.Write(b.Fd, (byte*)&one, 8) == 8;
    }
}
