// SPDX-License-Identifier: BSD-2-Clause
using System.Text;
using Hyve.Boot;
using Hyve.Config;
using Hyve.Vmm;
using Xunit;

namespace Hyve.Tests.Config;

/// <summary>
/// Replays the fuzzing corpora kept in fuzz/corpus (and every crash kept in fuzz/regressions) through the same
/// targets as fuzz/Hyve.Fuzz (without the licence line each corpus file begins with): each input must end normally or
/// with the one-line host-error exceptions. Fast: no
/// fuzzing here, only the inputs AFL++ found interesting.
/// </summary>
public class FuzzCorpusTests
{
    private static IEnumerable<string> Inputs(string target)
    {
        foreach (var dir in new[] { "corpus", "regressions" })
        {
            string d = Path.Combine(HyveProcess.RepoRoot, "fuzz", dir, target);
            if (Directory.Exists(d))
                foreach (var f in Directory.GetFiles(d)) yield return f;
        }
    }

    private static void Replay(string target, Action<byte[]> run)
    {
        int n = 0;
        foreach (var f in Inputs(target))
        {
            n++;
            try { run(Hyve.Fuzz.MoreTargets.Payload(File.ReadAllBytes(f))); }
            catch (Exception e) when (e is ConfigException or HostConfigException || Hyve.Fuzz.MoreTargets.IsHostError(e)) { }
            catch (Exception e)
            {
                Assert.Fail($"{target} input {Path.GetFileName(f)}: {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.True(n > 0, $"no corpus for {target}");
    }

    [Fact]
    public void OptionsCorpus() => Replay("options", data => Options.Parse(Encoding.UTF8.GetString(data).Split('\0')));

    [Fact]
    public void ConfigFileCorpus()
    {
        string f = Path.Combine(Path.GetTempPath(), $"hyve-kfile-{Guid.NewGuid():N}");
        try { Replay("kfile", data => { File.WriteAllBytes(f, data); Options.Parse(["-k", f, "vm"]); }); }
        finally { File.Delete(f); }
    }

    [Fact]
    public void KernelLoaderCorpus()
    {
        string f = Path.Combine(Path.GetTempPath(), $"hyve-kernel-{Guid.NewGuid():N}");
        try
        {
            Replay("kernel", data =>
            {
                File.WriteAllBytes(f, data);
                using var mem = new GuestMemory(64ul << 20);
                KernelLoader.Load(mem, f, null, "console=ttyS0");
            });
        }
        finally { File.Delete(f); }
    }

    // The guest-facing targets (instruction engine, virtqueue chains, fw_cfg DMA), the snapshot loader and ACPI table
    // generation from the topologies and slots the options accept.
    [Theory]
    [InlineData("engine")]
    [InlineData("virtqueue")]
    [InlineData("fwcfg")]
    [InlineData("snapshot")]
    [InlineData("acpi")]
    public void GuestFacingCorpus(string target) => Replay(target, Hyve.Fuzz.MoreTargets.All[target]);

    // The servers a peer talks to: the GDB remote protocol, the control socket, the VNC server's client messages.
    [Theory]
    [InlineData("gdb")]
    [InlineData("control")]
    [InlineData("rfb")]
    public void ProtocolCorpus(string target)
    {
        try { Replay(target, Hyve.Fuzz.ProtocolTargets.All[target]); }
        finally { Hyve.Fuzz.ProtocolTargets.Shutdown(); }
    }

    // The snapshot seed is a whole, valid snapshot: the target reaches past the header and checksums.
    [Fact]
    public void TheSnapshotSeedLoads()
        => Hyve.Fuzz.MoreTargets.Snapshot(Hyve.Fuzz.MoreTargets.Payload(File.ReadAllBytes(Path.Combine(HyveProcess.RepoRoot, "fuzz", "corpus", "snapshot", "rom-1M"))));
}
