// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;
using System.Text.RegularExpressions;
using Xunit;

namespace Hyve.Tests.Gdb;

/// <summary>Debian's gdb in batch mode against the real ./hyve -G, on the software CPU and (where this host's KVM can) on
/// KVM: attach, registers, memory, breakpoints in RAM and ROM, stepping, watchpoints, Ctrl-C, threads, detach.</summary>
public class GdbLiveTests
{
    private static ulong Value(string output, string key)
    {
        var m = Regex.Match(output, key + "=([0-9a-fA-F]+)");
        Assert.True(m.Success, $"no {key}= in gdb output: {output}");
        return ulong.Parse(m.Groups[1].Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
    }

    private static string P(string key, string expr) => $"printf \"{key}=%lx\\n\", {expr}";

    private static void AssertResetVectorBytes(string output)
    {
        // The ROM's last 16 bytes: GuestRom's jmp near to the ROM's start.
        var bytes = Regex.Match(output, @"0xfffffff0:\s+((0x[0-9a-f]{2}\s*){8})");
        Assert.True(bytes.Success, output);
        Assert.StartsWith("0xe9\t0x0d\t0x00", bytes.Groups[1].Value.Trim(), StringComparison.Ordinal);
    }

    // Attach to the running guest; registers; reset-vector bytes; a breakpoint in RAM (software with Z0 or hardware);
    // a single step; a hardware breakpoint further on; memory write (the loop's flag) and register write (the AX the
    // guest prints); detach: the guest runs to its end.
    private static void BreakStepWriteDetach(string accel, bool softwareBreakpoint)
    {
        string name = GdbGuest.NewName();
        int port = GdbGuest.FreePort();
        using var vm = GdbGuest.StartVm(accel, port, GdbGuest.Rom(), name);
        vm.WaitForOutput("ready\n");

        var (status, output, err) = GdbGuest.RunGdb(port,
            P("ATTACH_PC", "$pc"),
            "info registers rip eflags cs",
            "x/16xb 0xfffffff0",
            $"{(softwareBreakpoint ? "break" : "hbreak")} *0x{GdbGuest.RamRoutine:x}",
            "continue",
            P("BP_PC", "$pc"),
            "stepi",
            P("STEP_PC", "$pc"),
            "delete",
            $"hbreak *0x{GdbGuest.AfterMovAx:x}",
            $"set {{int}}0x{GdbGuest.Flag:x} = 1",
            "continue",
            P("ROM_PC", "$pc"),
            P("ROM_AX", "$eax & 0xffff"),
            "set $eax = 0xbeef",
            "delete",
            "detach");
        Assert.True(status == 0, $"gdb failed: {output} {err}");
        Assert.Matches(@"rip\s+0x[0-9a-f]+", output);
        AssertResetVectorBytes(output);

        Assert.Equal(GdbGuest.RamRoutine, Value(output, "BP_PC"));
        Assert.Equal(GdbGuest.RamRoutine + (ulong)GdbGuest.FirstInstructionLength, Value(output, "STEP_PC"));
        Assert.Equal(GdbGuest.AfterMovAx, Value(output, "ROM_PC"));
        Assert.Equal(0x1234ul, Value(output, "ROM_AX"));

        vm.WaitForExit(60);
        // The flag gdb wrote ended the loop; the AX gdb wrote is what the guest printed.
        Assert.Equal("ready\nbeef\n", vm.Stdout);
        Assert.Equal(2, vm.ExitCode);
    }

    [GdbFact]
    public void Soft_AttachBreakStepWriteAndDetach() => BreakStepWriteDetach("soft", softwareBreakpoint: true);

    [KvmGdbFact]
    public void Kvm_AttachHardwareBreakStepWriteAndDetach() => BreakStepWriteDetach("kvm", softwareBreakpoint: false);

    [KvmHardwareDebugFact("INT3 never becomes KVM_EXIT_DEBUG, so Z0 breakpoints never stop")]
    public void Kvm_SoftwareBreakpointInRam() => BreakStepWriteDetach("kvm", softwareBreakpoint: true);

    [GdbFact]
    public void Soft_WatchpointsStopAfterTheAccessAndTheEndIsReported() => Watchpoints("soft");

    [KvmHardwareDebugFact("a DR7 data breakpoint never stopped the guest here (its instruction emulator reports none)")]
    public void Kvm_WatchpointsStopAfterTheAccessAndTheEndIsReported() => Watchpoints("kvm");

    // watch (Z2), rwatch (Z3) and awatch (Z4) on the guest's counter and flag; then the guest ends under gdb ('W').
    private static void Watchpoints(string accel)
    {
        string name = GdbGuest.NewName();
        int port = GdbGuest.FreePort();
        using var vm = GdbGuest.StartVm(accel, port, GdbGuest.Rom(), name);
        vm.WaitForOutput("ready\n");

        var (status, output, err) = GdbGuest.RunGdb(port,
            $"watch *(int*)0x{GdbGuest.Counter:x}",
            "continue",
            P("WATCH_PC", "$pc"),
            "delete",
            $"rwatch *(short*)0x{GdbGuest.Flag:x}",
            "continue",
            P("RWATCH_PC", "$pc"),
            "delete",
            $"awatch *(char*)0x{GdbGuest.Counter + 1:x}",
            "continue",
            P("AWATCH_PC", "$pc"),
            "delete",
            $"set {{int}}0x{GdbGuest.Flag:x} = 1",
            "continue");
        Assert.True(status == 0, $"gdb failed: {output} {err}");
        Assert.Contains("Hardware watchpoint", output, StringComparison.Ordinal);
        Assert.Contains("New value", output, StringComparison.Ordinal);
        Assert.Contains("Hardware read watchpoint", output, StringComparison.Ordinal);
        Assert.Contains("Hardware access (read/write) watchpoint", output, StringComparison.Ordinal);
        // Reported after the accessing instruction (a trap), as the debug registers do.
        ulong afterInc = GdbGuest.RamRoutine + (ulong)GdbGuest.FirstInstructionLength;
        Assert.Equal(afterInc, Value(output, "WATCH_PC"));
        Assert.Equal(GdbGuest.AfterFlagRead, Value(output, "RWATCH_PC"));
        // inc dword [Counter] reads and writes byte Counter+1 too.
        Assert.Equal(afterInc, Value(output, "AWATCH_PC"));
        // The guest ended while gdb waited for it: gdb got the 'W' packet with hyve's exit status.
        Assert.Contains("exited with code 02", output, StringComparison.Ordinal);

        vm.WaitForExit(60);
        Assert.Equal("ready\n1234\n", vm.Stdout);
        Assert.Equal(2, vm.ExitCode);
    }

    [GdbFact]
    public void Soft_CtrlCStopsEveryVcpuThreadsAreVcpusAndAStepMovesOnlyItsVcpu()
    {
        string name = GdbGuest.NewName();
        int port = GdbGuest.FreePort();
        using var vm = GdbGuest.StartVm("soft", port, GdbGuest.SmpRom(), name, cpus: 2);
        vm.WaitForOutput("ready\n");

        var (status, output, err) = GdbGuest.RunGdb(port, interruptAfterMs: 2000,
            "continue",
            P("C0A", $"*(int*)0x{GdbGuest.BspCounter:x}"),
            P("C1A", $"*(int*)0x{GdbGuest.ApCounter:x}"),
            "shell sleep 0.3",
            P("C0B", $"*(int*)0x{GdbGuest.BspCounter:x}"),
            P("C1B", $"*(int*)0x{GdbGuest.ApCounter:x}"),
            "info threads",
            "thread 2",
            P("AP_CS", "$cs"),
            "stepi 3",
            P("C0C", $"*(int*)0x{GdbGuest.BspCounter:x}"),
            P("C1C", $"*(int*)0x{GdbGuest.ApCounter:x}"),
            "thread 1",
            P("BSP_PC", "$pc"),
            $"set var *(int*)0x{GdbGuest.SmpFlag:x} = 1",
            "detach");
        Assert.True(status == 0, $"gdb failed: {output} {err}");
        Assert.Contains("SIGINT", output, StringComparison.Ordinal);
        // Ctrl-C stopped both vCPUs: neither counter moves while gdb looks.
        Assert.Equal(Value(output, "C0A"), Value(output, "C0B"));
        Assert.Equal(Value(output, "C1A"), Value(output, "C1B"));
        Assert.True(Value(output, "C0A") > 0 && Value(output, "C1A") > 0, output);
        Assert.Contains("vCPU 0", output, StringComparison.Ordinal);
        Assert.Contains("vCPU 1", output, StringComparison.Ordinal);
        // Thread 2 is the AP, started at 0800:0000 by the SIPI.
        Assert.Equal(0x800ul, Value(output, "AP_CS"));
        // Three steps of the AP's three-instruction loop: one increment of its counter; the BSP stayed put.
        Assert.Equal(Value(output, "C1B") + 1, Value(output, "C1C"));
        Assert.Equal(Value(output, "C0B"), Value(output, "C0C"));
        Assert.True(Value(output, "BSP_PC") >= GuestRom.Code32Base, output);

        vm.WaitForExit(60);
        Assert.Equal("ready\ndone\n", vm.Stdout);
        Assert.Equal(2, vm.ExitCode);
    }

    // -G w: vCPU 0 waits at the reset vector for the debugger. On the software CPU, also a hardware breakpoint in the
    // ROM itself: the protected-mode guest runs flat (CS base 0) from the ROM, so gdb's pc is the linear address.
    private static void WaitAndRomBreakpoint(string accel, bool romBreakpoint)
    {
        string name = GdbGuest.NewName();
        int port = GdbGuest.FreePort();
        using var vm = GdbGuest.StartVm(accel, port, romBreakpoint ? GdbGuest.SmpRom() : GdbGuest.Rom(), name, gdbPrefix: "w");
        vm.WaitForSocket(name);
        Thread.Sleep(300);
        Assert.Equal("", vm.Stdout); // not one instruction yet

        string[] rom = romBreakpoint ? [$"hbreak *0x{GuestRom.Code32Base:x}", "continue", P("ROM_PC", "$pc"), "delete"] : [];
        var (status, output, err) = GdbGuest.RunGdb(port, [P("PC", "$pc"), P("CS", "$cs"), "x/16xb 0xfffffff0", .. rom, "detach"]);
        Assert.True(status == 0, $"gdb failed: {output} {err}");
        Assert.Equal(0xfff0ul, Value(output, "PC"));
        Assert.Equal(0xf000ul, Value(output, "CS"));
        AssertResetVectorBytes(output);
        if (romBreakpoint)
        {
            Assert.Contains("Breakpoint 1,", output, StringComparison.Ordinal);
            Assert.Equal(GuestRom.Code32Base, Value(output, "ROM_PC"));
        }

        vm.WaitForOutput("ready\n"); // detached: it runs
        Assert.Equal(0, vm.Ctl($"--vm={name}", "--force-poweroff").Status);
        vm.WaitForExit(30);
        Assert.Equal(1, vm.ExitCode);
    }

    [GdbFact]
    public void Soft_WaitOptionHoldsTheFirstInstructionAndARomBreakpointStops() => WaitAndRomBreakpoint("soft", romBreakpoint: true);

    // This host's KVM (kvm-pvm) cannot enter the protected-mode guest that a ROM breakpoint with pc = linear address needs.
    [KvmGdbFact]
    public void Kvm_WaitOptionHoldsTheFirstInstruction() => WaitAndRomBreakpoint("kvm", romBreakpoint: false);

    [GdbFact]
    public void Soft_GuestOwnInt3ReachesTheGuestWhileBreakpointsAreSet()
    {
        string name = GdbGuest.NewName();
        int port = GdbGuest.FreePort();
        using var vm = GdbGuest.StartVm("soft", port, GdbGuest.GuestInt3Rom(), name);
        vm.WaitForOutput("ready\n");

        var (status, output, err) = GdbGuest.RunGdb(port,
            $"break *0x{GdbGuest.RamRoutine:x}", // never reached: only so that INT3s come to the debugger
            $"set {{int}}0x{GdbGuest.Flag:x} = 1",
            "continue");
        Assert.True(status == 0, $"gdb failed: {output} {err}");
        Assert.Contains("exited with code 02", output, StringComparison.Ordinal);
        vm.WaitForExit(60);
        // The guest's INT3 went through its own IVT handler and returned past the INT3.
        Assert.Equal("ready\nbp\nback\n", vm.Stdout);
        Assert.Equal(2, vm.ExitCode);
    }
}
