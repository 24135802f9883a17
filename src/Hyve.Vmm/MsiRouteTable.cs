// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm;

/// <summary>
/// One interrupt message source a device sends from its own thread (an MSI-X vector of a virtio function). The backend
/// bound to it keeps its state in <see cref="Binding"/> (on KVM: a GSI, an eventfd registered with KVM_IRQFD, and the
/// address and data that GSI's route holds now).
/// </summary>
public sealed class MsiRoute
{
    /// <summary>The attached backend's state for this route, or null while no backend is attached.</summary>
    public object? Binding { get; set; }
}

/// <summary>
/// What a CPU backend does with <see cref="MsiRoute"/>s: bind and unbind them, and deliver a message through one.
/// </summary>
public interface IMsiRouteSink
{
    /// <summary>Prepares <paramref name="route"/> (sets its <see cref="MsiRoute.Binding"/>); false leaves it unbound.</summary>
    bool Bind(MsiRoute route);

    /// <summary>Releases what <see cref="Bind"/> made.</summary>
    void Unbind(MsiRoute route);

    /// <summary>Delivers the message (address, data) through <paramref name="route"/>, reprogramming the route first when
    /// its message changed; false when it could not (the caller delivers the message the ordinary way).</summary>
    bool Deliver(MsiRoute route, ulong address, uint data);
}

/// <summary>
/// The VM's interrupt routes for messages devices send from their I/O threads. Where the backend can (KVM), each route
/// is a GSI whose eventfd KVM watches (KVM_IRQFD, split irqchip MSI routes), so an interrupt costs an eventfd write
/// rather than a KVM_SIGNAL_MSI ioctl; the software CPU attaches no sink and messages go the ordinary way. Routes outlive
/// backends: a reset or a restore detaches the old backend and the new one binds them again, as
/// <see cref="IoEventFdTable"/> does for doorbells.
/// </summary>
public sealed class MsiRouteTable
{
    private readonly object _gate = new();
    private readonly List<MsiRoute> _routes = [];
    private IMsiRouteSink? _sink;

    /// <summary>The routes devices have made.</summary>
    public int Count { get { lock (_gate) return _routes.Count; } }

    /// <summary>Makes a route (bound to the attached backend, if any).</summary>
    public MsiRoute Add()
    {
        var r = new MsiRoute();
        lock (_gate)
        {
            _routes.Add(r);
            _sink?.Bind(r);
        }
        return r;
    }

    /// <summary>Delivers (address, data) through <paramref name="route"/>; false when no backend route took it.</summary>
    public bool TryDeliver(MsiRoute route, ulong address, uint data)
    {
        ArgumentNullException.ThrowIfNull(route);
        if (Volatile.Read(ref _sink) is null) return false; // the software CPU: no lock on its path
        lock (_gate) return _sink is not null && route.Binding is not null && _sink.Deliver(route, address, data);
    }

    /// <summary>Connects a backend and binds every route to it.</summary>
    public void Attach(IMsiRouteSink sink)
    {
        ArgumentNullException.ThrowIfNull(sink);
        lock (_gate)
        {
            _sink = sink;
            foreach (var r in _routes) sink.Bind(r);
        }
    }

    /// <summary>Unbinds every route from the backend and disconnects it.</summary>
    public void Detach()
    {
        lock (_gate)
        {
            if (_sink is null) return;
            foreach (var r in _routes)
            {
                if (r.Binding is not null) _sink.Unbind(r);
                r.Binding = null;
            }
            _sink = null;
        }
    }
}
