// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Gdb;

/// <summary>
/// The guest the GDB tests debug, in real mode (this machine's KVM cannot enter protected mode with a far jump from
/// the ROM): the ROM copies a routine to RAM at 0000:<see cref="RamRoutine"/> and a final block to 0000:<see cref="FinalBlock"/>,
/// far-calls the routine in a loop until the word at <see cref="Flag"/> becomes non-zero, then far-jumps to the final
/// block, which loads AX = 0x1234, prints AX as hex and a newline, and halts with interrupts off (status 2). With CS = 0
/// in RAM, gdb's pc (IP) equals the linear address, so gdb's breakpoints there match its pc.
/// </summary>
public static class GdbGuest
{
    /// <summary>Linear address (CS = 0, IP) of the RAM routine: inc dword [Counter]; mov ax, [Flag]; retf.</summary>
    public const uint RamRoutine = 0x8000;
    /// <summary>The flag the loop polls.</summary>
    public const uint Flag = 0x9000;
    /// <summary>A counter the RAM routine increments.</summary>
    public const uint Counter = 0x9004;
    /// <summary>Linear address (CS = 0, IP) of the final block.</summary>
    public const uint FinalBlock = 0x8100;
    private const uint RomBase = 0xffff0000, RoutineRomOffset = 0x8000, FinalRomOffset = 0x9000;

    /// <summary>Length of the RAM routine's first instruction (for the single-step check).</summary>
    public static int FirstInstructionLength { get; private set; }

    /// <summary>Linear address just past the RAM routine's read of <see cref="Flag"/> (its second instruction).</summary>
    public static uint AfterFlagRead { get; private set; }

    /// <summary>Linear address (and IP) of the instruction after "mov ax, 0x1234" in the final block.</summary>
    public static uint AfterMovAx { get; private set; }

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
        AfterFlagRead = RamRoutine + (uint)Assemble(RamRoutine, a =>
        {
            a.inc(__dword_ptr[Counter]);
            a.mov(ax, __word_ptr[Flag]);
        }).Length;
        int movLen = Assemble(FinalBlock, a => a.mov(ax, 0x1234)).Length;
        AfterMovAx = FinalBlock + (uint)movLen;
        byte[] final = Assemble(FinalBlock, a =>
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
            a.mov(si, (ushort)FinalRomOffset);
            a.mov(di, (ushort)FinalBlock);
            a.mov(cx, (ushort)final.Length);
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
            a.db(0xea); // jmp far 0000:FinalBlock
            a.dw((ushort)FinalBlock);
            a.dw(0);
        });
        routine.CopyTo(rom, (int)RoutineRomOffset);
        final.CopyTo(rom, (int)FinalRomOffset);
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

    /// <summary>Counter the application processor of <see cref="SmpRom"/> increments.</summary>
    public const uint ApCounter = 0x9100;
    /// <summary>Counter the bootstrap processor of <see cref="SmpRom"/> increments.</summary>
    public const uint BspCounter = 0x9104;
    /// <summary>Both processors of <see cref="SmpRom"/> loop until this dword is non-zero.</summary>
    public const uint SmpFlag = 0x9108;

    /// <summary>
    /// A two-processor guest for the software CPU: the BSP enters flat 32-bit protected mode, copies the AP's real-mode
    /// loop to 0x8000, starts the AP with INIT and a start-up IPI (vector 8), prints "ready", and both then count
    /// (AP at <see cref="ApCounter"/>, BSP at <see cref="BspCounter"/>: inc; cmp; je, three instructions a turn) until
    /// <see cref="SmpFlag"/> is set; the BSP prints "done" and both halt with interrupts off (status 2).
    /// </summary>
    public static byte[] SmpRom()
    {
        const int apRomOffset = 0xe000;
        byte[] ap = Assemble(0, a =>
        {
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.inc(__dword_ptr[ApCounter]);
            a.cmp(__dword_ptr[SmpFlag], 0);
            a.je(loop);
            a.cli();
            a.hlt();
        });
        var rom = GuestRom.ProtectedMode32(a =>
        {
            a.mov(esi, RomBase + apRomOffset);
            a.mov(edi, 0x8000);
            a.mov(ecx, (uint)ap.Length);
            a.cld();
            a.rep.movsb();
            a.mov(__dword_ptr[0xfee00300], 0x000c4500); // INIT to all but self
            a.mov(__dword_ptr[0xfee00300], 0x000c4608); // start-up, vector 8: the AP runs at 0800:0000
            GuestRom.Print(a, "ready\n");
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.inc(__dword_ptr[BspCounter]);
            a.cmp(__dword_ptr[SmpFlag], 0);
            a.je(loop);
            GuestRom.Print(a, "done\n");
            a.cli();
            a.hlt();
        });
        ap.CopyTo(rom, apRomOffset);
        return rom;
    }

    /// <summary>
    /// A guest whose own INT3 must reach its own handler while a debugger has software breakpoints planted elsewhere:
    /// the IVT's vector 3 points at a handler that prints "bp"; the code prints "ready", waits for <see cref="Flag"/>
    /// (set by the debugger), executes INT3, prints "back" after the handler returns, and halts (status 2).
    /// </summary>
    public static byte[] GuestInt3Rom()
    {
        const ushort handler = 0x9000;
        return GuestRom.RealModeWithBlocks(a =>
        {
            a.cli();
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(ss, ax);
            a.mov(sp, 0x7000);
            a.mov(__word_ptr[Flag], 0);
            a.mov(__word_ptr[3 * 4], handler);
            a.mov(__word_ptr[3 * 4 + 2], GuestRom.ShadowSegment);
            GuestRom.Print(a, "ready\n");
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.mov(ax, __word_ptr[Flag]);
            a.test(ax, ax);
            a.jz(wait);
            a.int3();
            GuestRom.Print(a, "back\n");
            a.cli();
            a.hlt();
        }, (handler, a =>
        {
            GuestRom.Print(a, "bp\n");
            a.iret();
        }));
    }

    /// <summary>Starts ./hyve with the debug server on <paramref name="port"/> (<paramref name="gdbPrefix"/> "w" to wait),
    /// COM1 on stdout, <paramref name="rom"/> as the boot ROM, on CPU engine <paramref name="accel"/>.</summary>
    public static HyveProcess StartVm(string accel, int port, byte[] rom, string name, string gdbPrefix = "", int cpus = 1)
        => HyveProcess.Start("-o", $"accel={accel}", "-c", cpus.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-G", gdbPrefix + port.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-l", $"bootrom,{GuestRom.ToFile(rom)}", "-l", "com1,stdio", name);

    /// <summary>A fresh VM name.</summary>
    public static string NewName() => "gdb" + Guid.NewGuid().ToString("N")[..8];

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
    public static (int Status, string Out, string Err) RunGdb(int port, params string[] commands) => RunGdb(port, 0, commands);

    /// <summary>As <see cref="RunGdb(int, string[])"/>, sending gdb SIGINT (what Ctrl-C does) <paramref name="interruptAfterMs"/>
    /// after it starts, when that is not 0: gdb then interrupts the running target.</summary>
    public static (int Status, string Out, string Err) RunGdb(int port, int interruptAfterMs, params string[] commands)
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
        if (interruptAfterMs > 0)
        {
            var pid = p.Id;
            _ = Task.Run(async () =>
            {
                await Task.Delay(interruptAfterMs).ConfigureAwait(false);
                using var kill = Process.Start("kill", $"-INT {pid}");
                kill?.WaitForExit();
            });
        }
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(60_000))
        {
            // A gdb waiting forever (a stop that never came) fails the test instead of hanging it.
            p.Kill(true);
            p.WaitForExit();
            throw new TimeoutException($"gdb did not finish: {output.Result} {err.Result}");
        }
        p.WaitForExit();
        return (p.ExitCode, output.Result, err.Result);
    }
}
