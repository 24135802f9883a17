// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Gdb;

/// <summary>
/// The guest the GDB tests debug, in real mode (this machine's KVM cannot enter protected mode with a far jump from
/// the ROM): the ROM copies a routine to RAM at 0000:<see cref="RamRoutine"/> and far-calls it in a loop until the
/// word at <see cref="Flag"/> becomes non-zero, then jumps to <see cref="FinalBlockOffset"/> in the ROM, which loads
/// AX = 0x1234, prints AX as hex and a newline, and halts with interrupts off (status 2). With CS = 0 in the RAM
/// routine, gdb's pc (IP) equals the linear address.
/// </summary>
public static class GdbGuest
{
    /// <summary>Linear address (CS = 0, IP) of the RAM routine: inc dword [Counter]; mov ax, [Flag]; retf.</summary>
    public const uint RamRoutine = 0x8000;
    /// <summary>The flag the loop polls.</summary>
    public const uint Flag = 0x9000;
    /// <summary>A counter the RAM routine increments.</summary>
    public const uint Counter = 0x9004;
    /// <summary>Offset of the final block in the ROM's 64 KiB segment (CS base 0xFFFF0000).</summary>
    public const uint FinalBlockOffset = 0x9000;
    private const uint RomBase = 0xffff0000, RoutineRomOffset = 0x8000;

    /// <summary>Length of the RAM routine's first instruction (for the single-step check).</summary>
    public static int FirstInstructionLength { get; private set; }

    /// <summary>IP of the instruction after "mov ax, 0x1234" in the final block.</summary>
    public static uint AfterMovAx { get; private set; }

    /// <summary>Linear address of that instruction (the ROM hardware breakpoint).</summary>
    public static uint AfterMovAxLinear => RomBase + AfterMovAx;

    /// <summary>Builds the ROM image.</summary>
    public static byte[] Rom()
    {
        byte[] routine = Assemble(RamRoutine, a =>
        {
            a.inc(__dword_ptr[Counter]);
            a.mov(ax, __word_ptr[Flag]);
            a.retf();
        });
        FirstInstructionLength = Assemble(RamRoutine, a => a.inc(__dword_ptr[Counter])).Length;
        int movLen = Assemble(FinalBlockOffset, a => a.mov(ax, 0x1234)).Length;
        AfterMovAx = FinalBlockOffset + (uint)movLen;
        byte[] final = Assemble(FinalBlockOffset, a =>
        {
            a.mov(ax, 0x1234);
            a.nop();
            GuestRom.PrintHexAx(a);
            GuestRom.Print(a, "\n");
            a.cli();
            a.hlt();
        });
        var rom = GuestRom.RealMode(a =>
        {
            a.cli();
            a.push(cs);
            a.pop(ds);
            a.xor(ax, ax);
            a.mov(es, ax);
            a.mov(si, (ushort)RoutineRomOffset);
            a.mov(di, (ushort)RamRoutine);
            a.mov(cx, (ushort)routine.Length);
            a.cld();
            a.rep.movsb();
            a.mov(ds, ax);
            a.mov(__word_ptr[Flag], 0);
            GuestRom.Print(a, "ready\n");
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.db(0x9a); // call far 0000:RamRoutine
            a.dw((ushort)RamRoutine);
            a.dw(0);
            a.test(ax, ax);
            a.jz(loop);
            a.jmp((ulong)FinalBlockOffset); // the ROM's code is assembled at IP 0
        });
        routine.CopyTo(rom, (int)RoutineRomOffset);
        final.CopyTo(rom, (int)FinalBlockOffset);
        return rom;
    }

    private static byte[] Assemble(ulong ip, Action<Assembler> code)
    {
        var a = new Assembler(16);
        code(a);
        var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), ip);
        return ms.ToArray();
    }

    /// <summary>A TCP port nobody listens on right now.</summary>
    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    /// <summary>True when Debian's gdb is installed.</summary>
    public static bool HaveGdb => File.Exists("/usr/bin/gdb");

    /// <summary>Runs gdb in batch mode against localhost:<paramref name="port"/> with <paramref name="commands"/>; returns its stdout and stderr.</summary>
    public static (int Status, string Out, string Err) RunGdb(int port, params string[] commands)
    {
        var psi = new ProcessStartInfo("/usr/bin/gdb")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (var a in new[] { "-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", $"target remote 127.0.0.1:{port}" })
            psi.ArgumentList.Add(a);
        foreach (var c in commands)
        {
            psi.ArgumentList.Add("-ex");
            psi.ArgumentList.Add(c);
        }
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(true);
            throw new TimeoutException($"gdb did not finish: {output}");
        }
        return (p.ExitCode, output, err.Result);
    }
}
