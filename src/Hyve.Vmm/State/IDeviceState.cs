// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm.State;

/// <summary>
/// How a device model saves and restores itself: one versioned section of a snapshot (bhyve's per-device
/// <c>*_snapshot</c>, Cloud Hypervisor's <c>Snapshottable</c>, Firecracker's <c>Persist</c>).
/// <para>
/// The section is named by <see cref="StateName"/> (stable, lower-case, never renamed once released: it is how an
/// old file finds the loader) and by the instance the <see cref="DeviceInventory"/> gave the device ("0", "com1",
/// "0:1.3"). The section table of the snapshot carries the version; the payload carries only the fields.
/// </para>
/// <para>Rules for implementers:</para>
/// <list type="bullet">
/// <item><see cref="SaveState"/> writes the layout of <see cref="StateVersion"/>. It runs with every vCPU paused at an
/// instruction boundary and every device quiesced (see <see cref="IQuiescent"/>), under the device's own lock.</item>
/// <item><see cref="LoadState"/> reads any version from <see cref="OldestStateVersion"/> to <see cref="StateVersion"/>
/// (the inventory refuses others before calling). Adding a field means a new version: bump
/// <see cref="StateVersion"/>, write the field at the end, and in the loader read it only when
/// <c>version &gt;= new</c>, otherwise give it the value the old model behaved as. Never change an old layout.</item>
/// <item>The file is untrusted: clamp or refuse (<see cref="InvalidDataException"/>) every value that could break the
/// model (counts, indices, sizes); a short section throws <see cref="EndOfStreamException"/>, and the inventory refuses a
/// section the loader did not read to its end.</item>
/// <item>Times are written relative to the VM clock at the save and rebased on the clock at the load, so a restore in
/// another process (or on another CPU engine) resumes timers where they were.</item>
/// <item>Load into a freshly built device. A device that raises an interrupt line as its state implies may do so:
/// the interrupt controllers are restored after the devices and put back the exact line counts they saved.</item>
/// <item>A PCI function gets its configuration space saved for it (section <c>pci-config</c>); implement this
/// interface on the function only for its own state, and override <c>PciDevice.OnRestored</c> to act on the restored
/// configuration (claim ports, remap BARs).</item>
/// </list>
/// To join the inventory: <c>vm.Devices.Add("name", "instance", device, DevicePhase.Devices, device.Reset)</c>; PCI
/// functions are registered by the bus.
/// </summary>
public interface IDeviceState
{
    /// <summary>The section name (stable across versions).</summary>
    string StateName { get; }

    /// <summary>The layout version <see cref="SaveState"/> writes (1 and up).</summary>
    int StateVersion { get; }

    /// <summary>The oldest layout version <see cref="LoadState"/> still reads.</summary>
    int OldestStateVersion { get; }

    /// <summary>Writes the state in the layout of <see cref="StateVersion"/>.</summary>
    void SaveState(BinaryWriter writer);

    /// <summary>Reads state in the layout of <paramref name="version"/> (between oldest and current).</summary>
    void LoadState(BinaryReader reader, int version);
}

/// <summary>A device with work in flight (I/O threads, queues): it finishes and holds it around a snapshot.</summary>
public interface IQuiescent
{
    /// <summary>Completes in-flight work, flushes to stable storage and starts no new work until <see cref="Resume"/>.</summary>
    void Quiesce();

    /// <summary>Starts work again after <see cref="Quiesce"/>.</summary>
    void Resume();
}
