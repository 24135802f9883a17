// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Config;
using Hyve.Devices;
using Hyve.Snapshot;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.Vmm.State;

namespace Hyve;

/// <summary>The hyve executable's entry point.</summary>
public static class Program
{
    /// <summary>Runs hyve with bhyve(8)'s command line; returns bhyve's exit status
    /// (0 reboot, 1 power off, 2 halt, 3 triple fault, 4 error).</summary>
    public static int Main(string[] args)
    {
        StartupTrace.Mark("main");
        HostSignals.IgnoreFileSizeLimitSignal();
        var r = Options.Parse(args);
        StartupTrace.Mark("options parsed");
        if (r.Error is not null)
        {
            Console.Error.WriteLine($"hyve: {r.Error}");
            if (r.ShowUsage) Console.Error.Write(Options.Usage());
            return 4;
        }
        if (r.HelpText is not null)
        {
            Console.Out.Write(r.HelpText);
            return 0;
        }
        if (r.DumpConfig)
        {
            // bhyve prints the tree and exits with status 1 without starting the VM.
            Console.Out.Write(r.Config.Dump());
            return 1;
        }
        SnapshotReader? snapshot = null;
        string? restoreFile = r.Config.Get("restore_file");
        try
        {
            // -r: the snapshot is checked whole (header, manifest, every section's checksum) before anything is built.
            if (restoreFile is not null)
            {
                snapshot = SnapshotReader.Open(restoreFile);
                StartupTrace.Mark("snapshot checked");
                r = MachineSnapshots.MergeOptions(r, snapshot);
                StartupTrace.Mark("options merged");
            }
            using var machine = new Machine(r, snapshot);
            StartupTrace.Mark("machine built");
            return machine.Run();
        }
        catch (Exception e) when (e is HostConfigException or ConfigException or ControlServerException or IOException)
        {
            ConsoleTerminal.RestoreTerminal();
            Console.Error.WriteLine($"hyve: {e.Message}");
            return 4;
        }
        catch (SnapshotFormatException e)
        {
            Console.Error.WriteLine($"hyve: -r {restoreFile}: {e.Message}");
            return 4;
        }
        finally
        {
            snapshot?.Dispose();
            ConsoleBackend.FlushAll();
            ConsoleTerminal.RestoreTerminal();
            RunFiles.DeleteAllOwnSockets();
            StartupTrace.Report();
        }
    }
}
