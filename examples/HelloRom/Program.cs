// SPDX-License-Identifier: BSD-2-Clause
// Builds a 64 KiB boot ROM that greets on COM1, echoes what you type until you press q, then halts
// with interrupts off (hyve exits with status 2). Usage: dotnet run --project examples/HelloRom -- OUT.rom
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

if (args.Length != 1)
{
    Console.Error.WriteLine("usage: HelloRom OUT.rom");
    return 2;
}

const ushort Com1 = 0x3f8;
const ushort MessageOffset = 0x1000;
var a = new Assembler(16);
var print = a.CreateLabel();
var putc = a.CreateLabel();
var echo = a.CreateLabel();
var done = a.CreateLabel();

// The ROM is entered at 0xFFFF0000 (CS base after reset); DS = CS so the message is addressable.
a.mov(ax, cs);
a.mov(ds, ax);
a.mov(si, MessageOffset);
a.call(print);
// Wait for a received byte (LSR.DR), then send it back; 'q' ends.
a.Label(ref echo);
a.mov(dx, (ushort)(Com1 + 5));
a.@in(al, dx);
a.test(al, 1);
a.jz(echo);
a.mov(dx, Com1);
a.@in(al, dx);
a.cmp(al, (byte)'q');
a.je(done);
a.mov(bl, al);
a.call(putc);
a.jmp(echo);
a.Label(ref done);
a.cli();
a.hlt();

// print: DS:SI -> NUL-terminated string on COM1.
a.Label(ref print);
var ret = a.CreateLabel();
a.lodsb();
a.test(al, al);
a.jz(ret);
a.mov(bl, al);
a.call(putc);
a.jmp(print);
a.Label(ref ret);
a.ret();

// putc: BL -> COM1, polling LSR.THRE.
a.Label(ref putc);
a.mov(dx, (ushort)(Com1 + 5));
a.@in(al, dx);
a.test(al, 0x20);
a.jz(putc);
a.mov(dx, Com1);
a.mov(al, bl);
a.@out(dx, al);
a.ret();


var ms = new MemoryStream();
a.Assemble(new StreamCodeWriter(ms), 0);
var rom = new byte[64 * 1024];
Array.Fill(rom, (byte)0xf4);
ms.ToArray().CopyTo(rom, 0);
System.Text.Encoding.ASCII.GetBytes("Hello from a hyve boot ROM. Type; q halts.\r\n\0").CopyTo(rom, MessageOffset);
// Reset vector at offset 0xFFF0: jmp near to offset 0 (IP wraps at 64 KiB).
rom[0xfff0] = 0xe9;
rom[0xfff1] = 0x0d;
rom[0xfff2] = 0x00;
File.WriteAllBytes(args[0], rom);
return 0;
