// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;
using Xunit;

namespace Hyve.Tests.Machine;

/// <summary>hyvectl against a running hyve on each CPU engine: bhyvectl's formats over the control socket.</summary>
public class HyvectlLiveTests
{
    private static string SpinningRom() => GuestRom.ToFile(GuestRom.RealMode(a =>
    {
        GuestRom.Print(a, "spinning\n");
        var l = a.CreateLabel();
        a.Label(ref l);
        a.jmp(l);
    }));

    [Theory, KvmData, SoftData]
    public void TopologyRegistersAndForcedPowerOff(string accel)
    {
        string name = "ctl" + Guid.NewGuid().ToString("N")[..8];
        using var vm = HyveProcess.Start(Backends.Args(accel, "-c", "cpus=4,sockets=2,cores=2,threads=1", "-l", $"bootrom,{SpinningRom()}", "-l", "com1,stdio", name));
        vm.WaitForOutput("spinning\n");
        vm.WaitForSocket(name);

        var topo = vm.Ctl($"--vm={name}", "--get-cpu-topology");
        Assert.Equal(0, topo.Status);
        Assert.Equal("cpu_topology:\tsockets=2, cores=2, threads=1, maxcpus=4\n", topo.Out);

        // Only the BSP runs: the APs wait for INIT/SIPI.
        var active = vm.Ctl($"--vm={name}", "--get-active-cpus");
        Assert.Equal("active cpus:\t 0\n", active.Out);

        var rip = vm.Ctl($"--vm={name}", "--get-rip");
        Assert.Equal(0, rip.Status);
        Assert.Matches(@"^rip\[0\]\t\t0x[0-9a-f]{16}\n$", rip.Out);
        ulong ripValue = Convert.ToUInt64(rip.Out.Split("0x")[1].Trim(), 16);
        Assert.InRange(ripValue, 0ul, 0xfffful); // somewhere in the ROM's 64 KiB segment

        var cs = vm.Ctl($"--vm={name}", "--get-desc-cs");
        Assert.Contains("0x00000000ffff0000", cs.Out, StringComparison.Ordinal); // the reset CS base

        var rax = vm.Ctl($"--vm={name}", "--set-rax=0x1234");
        Assert.Equal(0, rax.Status);
        Assert.Equal("rax[0]\t\t0x0000000000001234\n", vm.Ctl($"--vm={name}", "--get-rax").Out);

        var off = vm.Ctl($"--vm={name}", "--force-poweroff");
        Assert.Equal(0, off.Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
    }

    [Theory, KvmData, SoftData]
    public void ASecondHyveWithTheSameNameIsRefused(string accel)
    {
        string name = "dup" + Guid.NewGuid().ToString("N")[..8];
        string rom = SpinningRom();
        using var first = HyveProcess.Start(Backends.Args(accel, "-l", $"bootrom,{rom}", "-l", "com1,stdio", name));
        first.WaitForOutput("spinning\n");
        first.WaitForSocket(name);
        // The second hyve uses the first one's run directory.
        var psi = new System.Diagnostics.ProcessStartInfo(Path.Combine(HyveProcess.RepoRoot, "hyve"))
        {
            RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false,
        };
        foreach (var a in Backends.Args(accel, "-l", $"bootrom,{rom}", name)) psi.ArgumentList.Add(a);
        psi.Environment["HYVE_RUN_DIR"] = first.RunDir;
        using var p = System.Diagnostics.Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.Equal(4, p.ExitCode);
        Assert.Contains("already running", err, StringComparison.Ordinal);
        Assert.Equal(0, first.Ctl($"--vm={name}", "--force-poweroff").Status);
        first.WaitForExit(30);
        Assert.Equal(1, first.ExitCode);
    }

    [Theory, KvmData, SoftData]
    public void ForcedResetRestartsTheGuest(string accel)
    {
        string name = "rst" + Guid.NewGuid().ToString("N")[..8];
        using var vm = HyveProcess.Start(Backends.Args(accel, "-l", $"bootrom,{SpinningRom()}", "-l", "com1,stdio", name));
        vm.WaitForOutput("spinning\n");
        vm.WaitForSocket(name);
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-reset").Status);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (vm.Stdout != "spinning\nspinning\n" && sw.Elapsed.TotalSeconds < 30) Thread.Sleep(20);
        Assert.Equal("spinning\nspinning\n", vm.Stdout);
        vm.Ctl($"--vm={name}", "--force-poweroff");
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
    }
}
