// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using Hyve.Config;
using Hyve.Virtio;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vmm.State;

namespace Hyve.Snapshot;

/// <summary>
/// Checkpoint and restore of a whole machine (bhyve's snapshot.c, in Hyve's own format: see <see cref="SnapshotHeader"/>,
/// <see cref="SnapshotManifest"/>): every vCPU paused at an instruction boundary, the devices quiesced and the timers
/// held, then the device sections from the inventory, one <c>vcpu</c> section per vCPU, guest memory and the whole
/// configuration written; a restore builds the machine the configuration describes, maps guest memory copy-on-write
/// and loads the sections.
/// </summary>
public sealed class MachineSnapshots(Vm vm, ConfigTree config, TimerQueue clock) : ISnapshotHandler
{
    /// <summary>The version string snapshot headers carry.</summary>
    public const string HyveVersion = "hyve 0.14";
    private const int PauseTimeoutMs = 5000;
    private readonly object _gate = new();

    /// <inheritdoc/>
    public void Checkpoint(string path, bool thenExit)
    {
        lock (_gate)
        {
            if (!vm.IsRunning) throw new InvalidOperationException("the VM is not running");
            if (!vm.PauseAll(PauseTimeoutMs)) throw new IOException($"the vCPUs did not pause within {PauseTimeoutMs} ms; no snapshot taken");
            bool exiting = false;
            try
            {
                using (clock.HoldCallbacks())
                {
                    vm.Devices.Quiesce();
                    try
                    {
                        Write(path);
                    }
                    finally
                    {
                        vm.Devices.Resume();
                    }
                }
                exiting = thenExit;
            }
            finally
            {
                // bhyve ends the process with status 0 after a suspend; a failed one leaves the VM running.
                if (exiting) vm.Exit(0);
                else vm.ResumeAll();
            }
        }
    }

    private void Write(string path)
    {
        var sections = vm.Devices.Save();
        for (int i = 0; i < vm.CpuCount; i++)
        {
            var cpu = vm.OnVcpu(i, v => v.GetState());
            sections.Add(DeviceInventory.SaveOne(cpu, i.ToString(CultureInfo.InvariantCulture)));
        }
        string engine = vm.Backend?.Name ?? "none";
        var manifest = new SnapshotManifest
        {
            Vm = vm.Name,
            Created = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture),
            Hyve = HyveVersion,
            Engine = engine,
            Cpus = vm.CpuCount,
        };
        foreach (var kv in config.Entries())
            if (!IsHostOnly(kv.Key)) manifest.Config.Add(kv);
        manifest.GuestCpuid.AddRange(GuestCpuid.ForEngine(engine, vm.Topology, vm.CpuModel));
        // The disks were flushed by the quiesce: their identity now is the one the guest's state goes with.
        foreach (var b in Disks()) manifest.Disks.Add(DiskIdentity.Compute(b.Where, b.DiskPath, b.SizeBytes));
        var header = new SnapshotHeader(SnapshotHeader.CurrentMajor, SnapshotHeader.CurrentMinor, HyveVersion, SnapshotHeader.ThisArch,
            engine, CpuFingerprint.Vendor(), CpuFingerprint.Features(), 0, 0, 0);
        SnapshotWriter.Write(path, header, manifest, sections, vm.Memory);
    }

    private List<VirtioBlock> Disks()
    {
        var list = new List<VirtioBlock>();
        foreach (var e in vm.Devices.Entries)
            if (e.Device is VirtioBlock b && !list.Contains(b)) list.Add(b);
        return list;
    }

    /// <inheritdoc/>
    public void DumpGuestMemory(string path)
    {
        lock (_gate)
        {
            if (!vm.IsRunning) throw new InvalidOperationException("the VM is not running");
            if (!vm.PauseAll(PauseTimeoutMs)) throw new IOException($"the vCPUs did not pause within {PauseTimeoutMs} ms; no dump written");
            try
            {
                var cpus = new VcpuState[vm.CpuCount];
                for (int i = 0; i < cpus.Length; i++) cpus[i] = vm.OnVcpu(i, v => v.GetState());
                ElfCoreWriter.Write(path, vm.Memory, cpus);
            }
            finally
            {
                vm.ResumeAll();
            }
        }
    }

    // Keys that describe this run rather than the machine.
    private static bool IsHostOnly(string key) => key is "restore_file" or "config.dump" or "snapshot.check_cpuid";

    /// <summary>Keys a restore may give other values than the snapshot's: the VM's name, the CPU engine (snapshots move
    /// between KVM and the software CPU), consoles, disk and socket paths, the debug server.</summary>
    public static bool IsRepointable(string key) =>
        key is "name" or "restore_file" or "config.dump" or "accel" or "snapshot.check_cpuid" || key.StartsWith("gdb.", StringComparison.Ordinal)
        || (key.StartsWith("lpc.com", StringComparison.Ordinal) && key.EndsWith(".path", StringComparison.Ordinal))
        || (key.StartsWith("pci.", StringComparison.Ordinal) && key.EndsWith(".path", StringComparison.Ordinal));

    /// <summary>
    /// The options of a restore: the snapshot's configuration with the re-pointable keys the command line gave. Any other
    /// key the command line set to something else than the snapshot has is refused, naming the keys.
    /// </summary>
    public static ParseResult MergeOptions(ParseResult given, SnapshotReader snapshot)
    {
        ArgumentNullException.ThrowIfNull(given);
        ArgumentNullException.ThrowIfNull(snapshot);
        var merged = new ConfigTree();
        foreach (var (k, v) in snapshot.Manifest.Config) merged.Set(k, v);
        var differ = new List<string>();
        var written = given.Config.Written;
        foreach (var (k, v) in given.Config.Entries())
        {
            // Only what the command line (or -k file) gave is compared: a default it did not write is the snapshot's to
            // decide, while a value it gave is compared even when it equals the default (-m 256M against a 1G snapshot).
            if (!written.Contains(k)) continue;
            if (IsRepointable(k))
            {
                if (!IsHostOnly(k) || k == "snapshot.check_cpuid") merged.Set(k, v); // that one is for this run only
                continue;
            }
            if (!SameValue(k, merged.GetRaw(k), v)) differ.Add(k);
        }
        if (differ.Count > 0)
            throw new HostConfigException($"-r {snapshot.Path}: the options disagree with the snapshot's configuration on {string.Join(", ", differ)}");
        merged.SetIfUnset("name", snapshot.Manifest.Vm);
        try
        {
            return new ParseResult(merged) { Topology = Topology.FromConfig(merged), MemorySize = merged.GetMemorySize() };
        }
        catch (ConfigException e)
        {
            throw new HostConfigException($"-r {snapshot.Path}: the snapshot's configuration is unusable: {e.Message}");
        }
    }

    // memory.size is compared as a size (-m 1024 and 1G are the same machine); everything else as written.
    private static bool SameValue(string key, string? snapshot, string given)
    {
        if (snapshot == given) return true;
        if (snapshot is null || key != "memory.size") return false;
        var a = new ConfigTree();
        var b = new ConfigTree();
        a.Set(key, snapshot);
        b.Set(key, given);
        try { return a.GetMemorySize() == b.GetMemorySize(); }
        catch (ConfigException) { return false; }
    }

    /// <summary>Loads a checked snapshot into a machine built from its configuration: guest memory mapped copy-on-write,
    /// device sections into the inventory, vCPU states for the first run.</summary>
    public void Restore(SnapshotReader snapshot, string engine)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        var m = snapshot.Manifest;
        // The guest may use every CPU feature it saw: an engine (or host) without one of them cannot run it.
        if (m.GuestCpuid.Count > 0 && config.GetBool("snapshot.check_cpuid", true) && GuestCpuid.Missing(m.GuestCpuid, GuestCpuid.ForEngine(engine, vm.Topology, vm.CpuModel)) is { Count: > 0 } missing)
            throw new HostConfigException($"-r {snapshot.Path}: the guest saw CPU features that this host's {engine} engine lacks: {string.Join(" ", missing)} (-o snapshot.check_cpuid=false restores anyway)");
        var segs = vm.Memory.Segments;
        if (m.Segments.Count != segs.Count)
            throw new HostConfigException($"-r {snapshot.Path}: the snapshot has {m.Segments.Count} memory segments, this machine {segs.Count}");
        foreach (var e in m.Segments)
        {
            var seg = e.Id >= 0 && e.Id < segs.Count ? segs[e.Id] : null;
            if (seg is null || seg.Name != e.Name || seg.Length != e.Length)
                throw new HostConfigException($"-r {snapshot.Path}: memory segment {e.Name} ({e.Length} bytes) does not match this machine's");
        }
        if (m.Cpus != vm.CpuCount) throw new HostConfigException($"-r {snapshot.Path}: the snapshot has {m.Cpus} vCPUs, this machine {vm.CpuCount}");
        // A disk whose size or sampled contents changed since the checkpoint would not match the guest's caches.
        var disks = Disks();
        foreach (var d in m.Disks)
        {
            var b = disks.Find(x => x.Where == d.Device)
                ?? throw new HostConfigException($"-r {snapshot.Path}: the snapshot has disk {d.Device} ({d.Path}), this machine has none there");
            if (DiskIdentity.Differs(d, DiskIdentity.Compute(b.Where, b.DiskPath, b.SizeBytes)) is { } why)
                throw new HostConfigException($"-r {snapshot.Path}: disk {b.Where} ({b.DiskPath}) is not the one the snapshot was taken with: {why}");
        }
        StartupTrace.Mark("cpuid and disks checked");
        var devices = new List<StateSection>();
        var cpus = new VcpuState[vm.CpuCount];
        // Guest memory first: a device's loader may look at its rings, and nothing may see the empty memory built here.
        int fd = (int)snapshot.File.DangerousGetHandle();
        foreach (var e in m.Segments) vm.Memory.MapFromFile(segs[e.Id], fd, e.Offset);
        try
        {
            foreach (var s in snapshot.ReadSections())
            {
                if (s.Name != "vcpu") { devices.Add(s); continue; }
                if (!int.TryParse(s.Instance, NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id >= cpus.Length || cpus[id] is not null)
                    throw new InvalidDataException($"section vcpu/{s.Instance} names no vCPU of this machine");
                var st = new VcpuState();
                DeviceInventory.LoadOne(st, s);
                cpus[id] = st;
            }
            for (int i = 0; i < cpus.Length; i++)
                if (cpus[i] is null) throw new InvalidDataException($"the snapshot has no state for vcpu {i}");
            vm.Devices.Restore(devices);
        }
        catch (InvalidDataException e)
        {
            throw new HostConfigException($"-r {snapshot.Path}: {e.Message}");
        }
        StartupTrace.Mark("sections loaded");
        vm.RestoredCpus = cpus;
        // Devices with queues stay quiesced (their loaders leave them so) until every vCPU has its state.
        vm.AfterRestore = vm.Devices.Resume;
    }
}
