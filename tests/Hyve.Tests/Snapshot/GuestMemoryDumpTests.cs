// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Snapshot;

/// <summary>hyvectl --dump-guest-memory: an ELF core in QEMU's dump-guest-memory layout, read with readelf and gdb.</summary>
public class GuestMemoryDumpTests
{
    private static (int Status, string Out) Run(string program, params string[] args)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o);
    }

    [Theory, KvmData, SoftData]
    public void The_dump_has_a_note_pair_per_vcpu_and_gdb_reads_guest_physical_memory_and_registers(string accel)
    {
        // The guest leaves a known value at guest-physical 0x7e00 and another in EAX, then spins.
        string rom = GuestRom.ToFile(GuestRom.RealMode(a =>
        {
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(__dword_ptr[0x7e00], unchecked((int)0xcafef00d));
            a.mov(eax, 0x11223344);
            var self = a.CreateLabel();
            a.Label(ref self);
            a.pause();
            a.jmp(self);
        }));
        string name = "d" + Guid.NewGuid().ToString("N")[..10];
        string dir = Directory.CreateTempSubdirectory("hyve-dump").FullName;
        string core = Path.Combine(dir, "guest.core");
        using (var p = HyveProcess.Start(Backends.Args(accel, "-c", "2", "-m", "64M", "-l", $"bootrom,{rom}", name)))
        {
            p.WaitForSocket(name);
            Thread.Sleep(300);
            var c = p.Ctl($"--vm={name}", $"--dump-guest-memory={core}");
            Assert.True(c.Status == 0, c.Err);
            // The VM goes on after the dump.
            Assert.False(p.HasExited);
            Assert.True(p.Ctl($"--vm={name}", "--force-poweroff").Status == 0);
            p.WaitForExit(30);
        }

        var notes = Run("readelf", "-n", core);
        Assert.Equal(0, notes.Status);
        Assert.Equal(2, CountOf(notes.Out, "NT_PRSTATUS"));
        Assert.Equal(2, CountOf(notes.Out, "QEMU"));
        var headers = Run("readelf", "-l", core);
        Assert.Contains("CORE (Core file)", Run("readelf", "-h", core).Out, StringComparison.Ordinal);
        Assert.True(CountOf(headers.Out, "LOAD") >= 2, headers.Out); // RAM below 3 GiB and the boot ROM

        var gdb = Run("gdb", "-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", "core-file " + core,
            "-ex", "x/wx 0x7e00", "-ex", "info registers rax");
        Assert.Contains("0xcafef00d", gdb.Out, StringComparison.Ordinal);
        Assert.Contains("0x11223344", gdb.Out, StringComparison.Ordinal);
        Directory.Delete(dir, true);
    }

    private static int CountOf(string text, string what)
    {
        int n = 0;
        for (int i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + 1, StringComparison.Ordinal)) n++;
        return n;
    }
}
