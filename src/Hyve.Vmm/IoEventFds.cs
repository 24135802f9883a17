// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>One guest write that signals an eventfd instead of exiting (KVM_IOEVENTFD's arguments).</summary>
/// <param name="Address">Guest-physical address, or port number when <paramref name="Pio"/>.</param>
/// <param name="Length">Access width to match (1, 2, 4 or 8; 0 = any width, MMIO only).</param>
/// <param name="Pio">Port I/O rather than MMIO.</param>
/// <param name="DataMatch">When not null, only a write of this value matches.</param>
/// <param name="Fd">The eventfd.</param>
public readonly record struct IoEventFd(ulong Address, uint Length, bool Pio, ulong? DataMatch, int Fd);

/// <summary>
/// The doorbells devices would like the CPU engine to turn into eventfd signals without a VM exit (a virtio queue's
/// notify address). Devices add and remove entries as their BARs move; a backend that can (KVM, through
/// KVM_IOEVENTFD) attaches a sink and gets every current entry replayed. Without a sink, or where the sink refuses an
/// entry, the write still reaches the device's MMIO or port handler, which signals the same eventfd itself.
/// </summary>
public sealed class IoEventFdTable
{
    private readonly object _gate = new();
    private readonly List<IoEventFd> _entries = [];
    private Func<IoEventFd, bool, bool>? _sink;

    /// <summary>Entries registered now.</summary>
    public IReadOnlyList<IoEventFd> Entries { get { lock (_gate) return [.. _entries]; } }

    /// <summary>Adds an entry (and hands it to the sink, if one is attached).</summary>
    public void Add(IoEventFd e)
    {
        lock (_gate)
        {
            _entries.Add(e);
            _sink?.Invoke(e, true);
        }
    }

    /// <summary>Removes an entry added before (nothing when absent).</summary>
    public void Remove(IoEventFd e)
    {
        lock (_gate)
        {
            if (!_entries.Remove(e)) return;
            _sink?.Invoke(e, false);
        }
    }

    /// <summary>Attaches the backend's sink (assign = true/false; returns whether the backend took it) and replays the entries.</summary>
    public void Attach(Func<IoEventFd, bool, bool> sink)
    {
        lock (_gate)
        {
            _sink = sink;
            foreach (var e in _entries) sink(e, true);
        }
    }

    /// <summary>Detaches the sink after deassigning every entry from it.</summary>
    public void Detach()
    {
        lock (_gate)
        {
            if (_sink is null) return;
            foreach (var e in _entries) _sink(e, false);
            _sink = null;
        }
    }
}
