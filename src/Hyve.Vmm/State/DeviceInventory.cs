// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm.State;

/// <summary>
/// Where a device stands in the inventory's order. Reset runs the phases in this order (each phase in the order its
/// devices were added); save runs in the same order; restore runs the phases in reverse, so the interrupt
/// controllers are loaded last and overwrite the line counts that devices re-raised while loading.
/// </summary>
public enum DevicePhase
{
    /// <summary>PICs and IOAPIC.</summary>
    InterruptControllers,
    /// <summary>PIT, PM timer, HPET, RTC.</summary>
    Timers,
    /// <summary>Fixed platform devices: 8042, UARTs, ACPI PM block, POST port, fw_cfg, reset control.</summary>
    Platform,
    /// <summary>The PCI bus, its INTx router and its functions (the router before the functions).</summary>
    Pci,
    /// <summary>Devices added last (virtio and other I/O devices not on the fixed platform).</summary>
    Devices,
    /// <summary>Guest memory contents a reset puts back (the BIOS shadow, a direct-boot kernel).</summary>
    Memory,
}

/// <summary>One device as the inventory knows it.</summary>
/// <param name="Name">Section or device name.</param>
/// <param name="Instance">Instance within the name ("0", "com1", "0:1.3").</param>
/// <param name="Device">The device object.</param>
/// <param name="Phase">Its place in the order.</param>
/// <param name="Reset">What a machine reset does to it, or null.</param>
/// <param name="State">Its versioned state, or null for a device with none (stateless or reset-only).</param>
public sealed record DeviceEntry(string Name, string Instance, object Device, DevicePhase Phase, Action? Reset, IDeviceState? State);

/// <summary>One saved section: what the snapshot's section table lists, with the payload.</summary>
/// <param name="Name">Section name (<see cref="IDeviceState.StateName"/>).</param>
/// <param name="Instance">Instance.</param>
/// <param name="Version">Layout version of <paramref name="Data"/>.</param>
/// <param name="Oldest">Oldest version the saving Hyve could load.</param>
/// <param name="Data">The payload.</param>
public sealed record StateSection(string Name, string Instance, int Version, int Oldest, byte[] Data);

/// <summary>
/// The one list of a VM's devices (Cloud Hypervisor's device manager, bhyve's pci_devemu table plus its snapshot
/// list): every device is added once, and reset, quiesced, saved, restored and disposed from here in a stated order
/// (<see cref="DevicePhase"/>).
/// </summary>
public sealed class DeviceInventory : IDisposable
{
    private readonly List<DeviceEntry> _entries = [];
    private readonly List<IDisposable> _owned = [];
    private readonly object _gate = new();

    /// <summary>Every entry in phase order (each phase in the order added).</summary>
    public IReadOnlyList<DeviceEntry> Entries
    {
        get
        {
            lock (_gate) return Ordered();
        }
    }

    /// <summary>Adds a device. Its state section is <see cref="IDeviceState.StateName"/> when <paramref name="device"/>
    /// implements <see cref="IDeviceState"/> (or <paramref name="state"/> when given); <paramref name="reset"/> runs at a
    /// machine reset. A (section, instance) pair may be added once.</summary>
    public DeviceEntry Add(string name, string instance, object device, DevicePhase phase, Action? reset = null, IDeviceState? state = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentException.ThrowIfNullOrEmpty(instance);
        ArgumentNullException.ThrowIfNull(device);
        state ??= device as IDeviceState;
        var e = new DeviceEntry(state?.StateName ?? name, instance, device, phase, reset, state);
        lock (_gate)
        {
            if (e.State is not null)
                foreach (var o in _entries)
                    if (o.State is not null && o.Name == e.Name && o.Instance == e.Instance)
                        throw new InvalidOperationException($"device state {e.Name}/{e.Instance} added twice");
            _entries.Add(e);
        }
        return e;
    }

    /// <summary>Makes the inventory dispose <paramref name="d"/> with itself (in reverse order of adding).</summary>
    public T Own<T>(T d) where T : IDisposable
    {
        lock (_gate) _owned.Add(d);
        return d;
    }

    /// <summary>Machine reset: every device's reset hook, in phase order.</summary>
    public void Reset()
    {
        foreach (var e in Entries) e.Reset?.Invoke();
    }

    /// <summary>Quiesces every <see cref="IQuiescent"/> device (phase order).</summary>
    public void Quiesce()
    {
        foreach (var e in Entries) if (e.Device is IQuiescent q) q.Quiesce();
    }

    /// <summary>Resumes every <see cref="IQuiescent"/> device (reverse phase order).</summary>
    public void Resume()
    {
        var list = Entries;
        for (int i = list.Count - 1; i >= 0; i--) if (list[i].Device is IQuiescent q) q.Resume();
    }

    /// <summary>Saves every device with state, in phase order. Call with the vCPUs paused and devices quiesced.</summary>
    public List<StateSection> Save()
    {
        var sections = new List<StateSection>();
        foreach (var e in Entries)
            if (e.State is { } s) sections.Add(SaveOne(s, e.Instance));
        return sections;
    }

    /// <summary>Saves one state object as a section.</summary>
    public static StateSection SaveOne(IDeviceState state, string instance)
    {
        ArgumentNullException.ThrowIfNull(state);
        using var ms = new MemoryStream();
        using (var w = new BinaryWriter(ms, System.Text.Encoding.UTF8, leaveOpen: true)) state.SaveState(w);
        return new StateSection(state.StateName, instance, state.StateVersion, state.OldestStateVersion, ms.ToArray());
    }

    /// <summary>
    /// Restores every device with state from <paramref name="sections"/> (phases in reverse, see <see cref="DevicePhase"/>).
    /// Every device must find its section and every section its device; throws <see cref="InvalidDataException"/>
    /// naming the first that does not, or whose version or length is wrong.
    /// </summary>
    public void Restore(IReadOnlyList<StateSection> sections)
    {
        ArgumentNullException.ThrowIfNull(sections);
        var byKey = new Dictionary<(string, string), StateSection>();
        foreach (var s in sections)
            if (!byKey.TryAdd((s.Name, s.Instance), s)) throw new InvalidDataException($"section {s.Name}/{s.Instance} appears twice");
        var list = Entries;
        var phases = new List<List<DeviceEntry>>();
        DevicePhase? last = null;
        foreach (var e in list)
        {
            if (e.State is null) continue;
            if (last != e.Phase) { phases.Add([]); last = e.Phase; }
            phases[^1].Add(e);
        }
        foreach (var e in list)
            if (e.State is not null && !byKey.ContainsKey((e.Name, e.Instance)))
                throw new InvalidDataException($"the snapshot has no state for device {e.Name}/{e.Instance}");
        var used = new HashSet<(string, string)>();
        for (int p = phases.Count - 1; p >= 0; p--)
            foreach (var e in phases[p])
            {
                var s = byKey[(e.Name, e.Instance)];
                LoadOne(e.State!, s);
                used.Add((e.Name, e.Instance));
            }
        foreach (var s in sections)
            if (!used.Contains((s.Name, s.Instance)))
                throw new InvalidDataException($"the snapshot has state for device {s.Name}/{s.Instance}, which this machine lacks");
    }

    /// <summary>Loads one section into a state object after checking its name, version range and length.</summary>
    public static void LoadOne(IDeviceState state, StateSection section)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(section);
        string what = $"{section.Name}/{section.Instance}";
        if (section.Name != state.StateName) throw new InvalidDataException($"section {what} is not {state.StateName}");
        if (section.Version < state.OldestStateVersion || section.Version > state.StateVersion)
            throw new InvalidDataException(
                $"section {what} has version {section.Version}; this Hyve loads versions {state.OldestStateVersion} to {state.StateVersion}");
        using var ms = new MemoryStream(section.Data, writable: false);
        using var r = new BinaryReader(ms);
        try
        {
            state.LoadState(r, section.Version);
        }
        catch (EndOfStreamException)
        {
            throw new InvalidDataException($"section {what} is truncated");
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"section {what}: {e.Message}");
        }
        if (ms.Position != ms.Length) throw new InvalidDataException($"section {what} has {ms.Length - ms.Position} bytes its loader did not read");
    }

    /// <summary>Disposes what the inventory owns, last added first.</summary>
    public void Dispose()
    {
        List<IDisposable> owned;
        lock (_gate)
        {
            owned = [.. _owned];
            _owned.Clear();
        }
        for (int i = owned.Count - 1; i >= 0; i--)
        {
            try { owned[i].Dispose(); }
            catch (Exception e) when (e is IOException or ObjectDisposedException) { }
        }
    }

    private List<DeviceEntry> Ordered()
    {
        var list = new List<DeviceEntry>(_entries.Count);
        for (var p = DevicePhase.InterruptControllers; p <= DevicePhase.Memory; p++)
            foreach (var e in _entries) if (e.Phase == p) list.Add(e);
        return list;
    }
}
