// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.Tests;

/// <summary>Builds small boot ROMs with Iced's assembler: 16-bit code at the ROM's start (0xFFFF0000 with
/// the reset CS base) and a jump to it at the reset vector.</summary>
public static class GuestRom
{
    /// <summary>Assembles real-mode code into a ROM of <paramref name="size"/> bytes and returns the image.</summary>
    public static byte[] RealMode(Action<Assembler> code, int size = 64 * 1024)
    {
        var a = new Assembler(16);
        code(a);
        var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), 0);
        var rom = new byte[size];
        Array.Fill(rom, (byte)0xf4); // hlt
        if (ms.Length > size - 16) throw new ArgumentException("code does not fit");
        ms.ToArray().CopyTo(rom, 0);
        // At the reset vector (CS base 0xFFFF0000, IP 0xFFF0): jmp near rel16 to IP 0 of the same segment
        // (IP wraps at 64 KiB: 0xFFF3 + 0x000D = 0x10000 -> 0x0000).
        rom[size - 16] = 0xe9;
        rom[size - 15] = 0x0d;
        rom[size - 14] = 0x00;
        return rom;
    }

    /// <summary>Real-mode segment under which a 64 KiB <see cref="RealMode"/> ROM's bytes appear at their ROM offsets:
    /// the machine shadows the ROM into 0xF0000-0xFFFFF, so an IVT entry F000:offset reaches code placed there.</summary>
    public const ushort ShadowSegment = 0xf000;

    /// <summary>
    /// A 64 KiB real-mode ROM like <see cref="RealMode"/> whose <paramref name="blocks"/> (interrupt handlers, say)
    /// are each assembled for and placed at their own ROM offset, so <see cref="ShadowSegment"/>:Offset runs them.
    /// </summary>
    public static byte[] RealModeWithBlocks(Action<Assembler> code, params (ushort Offset, Action<Assembler> Code)[] blocks)
    {
        var rom = RealMode(code);
        foreach (var (offset, block) in blocks) PlaceBlock(rom, 16, offset, offset, block);
        return rom;
    }

    /// <summary>
    /// Assembles <paramref name="code"/> as <paramref name="bitness"/>-bit code that runs at <paramref name="address"/>
    /// and writes it into <paramref name="rom"/> at <paramref name="romOffset"/> (a gap still holding the hlt filler).
    /// For a 64 KiB ROM, 32-bit code at ROM offset N runs at 0xFFFF0000 + N.
    /// </summary>
    public static void PlaceBlock(byte[] rom, int bitness, int romOffset, ulong address, Action<Assembler> code)
    {
        var a = new Assembler(bitness);
        code(a);
        var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), address);
        if (romOffset < 0 || romOffset + ms.Length > rom.Length - 16) throw new ArgumentException($"block at 0x{romOffset:x} does not fit");
        // The gap is still the hlt filler unless other code reaches into it.
        if (Array.Exists(rom[romOffset..(romOffset + (int)ms.Length)], b => b != 0xf4))
            throw new ArgumentException($"block at 0x{romOffset:x} overlaps other code");
        ms.ToArray().CopyTo(rom, romOffset);
    }

    /// <summary>Linear address of the 32-bit code in a <see cref="ProtectedMode32"/> ROM.</summary>
    public const uint Code32Base = 0xffff1000;

    /// <summary>
    /// A 64 KiB ROM that enters 32-bit protected mode with flat segments (CS 0x08, DS/ES/SS 0x10, ESP 0x7000,
    /// interrupts off) and runs <paramref name="code32"/> at <see cref="Code32Base"/> straight from the ROM.
    /// </summary>
    public static byte[] ProtectedMode32(Action<Assembler> code32)
    {
        const int size = 64 * 1024, gdtOffset = 0xff00;
        var a32 = new Assembler(32);
        a32.mov(AssemblerRegisters.ax, 0x10);
        a32.mov(AssemblerRegisters.ds, AssemblerRegisters.ax);
        a32.mov(AssemblerRegisters.es, AssemblerRegisters.ax);
        a32.mov(AssemblerRegisters.ss, AssemblerRegisters.ax);
        a32.mov(AssemblerRegisters.esp, 0x7000);
        code32(a32);
        var ms = new MemoryStream();
        a32.Assemble(new StreamCodeWriter(ms), Code32Base);

        var rom = RealMode(a =>
        {
            a.cli();
            // CS still has the reset base 0xFFFF0000, so CS-relative offsets reach the ROM's own bytes.
            // o32 lgdt cs:[gdtOffset]: the 32-bit operand size keeps all 32 bits of the GDT base (16-bit keeps 24).
            a.db(0x66, 0x2e, 0x0f, 0x01, 0x16, gdtOffset & 0xff, gdtOffset >> 8);
            a.mov(AssemblerRegisters.eax, AssemblerRegisters.cr0);
            a.or(AssemblerRegisters.eax, 1);
            a.mov(AssemblerRegisters.cr0, AssemblerRegisters.eax);
            // jmp dword 0x08:Code32Base
            a.db(0x66, 0xea);
            a.dd(Code32Base);
            a.dw(0x08);
        }, size);
        if (ms.Length > 0xe000) throw new ArgumentException("32-bit code does not fit");
        ms.ToArray().CopyTo(rom, (int)(Code32Base - 0xffff0000));
        // GDTR at 0xff00 (limit, base), the GDT itself at 0xff08: null, flat 32-bit code, flat data.
        BitConverter.GetBytes((ushort)23).CopyTo(rom, gdtOffset);
        BitConverter.GetBytes(0xffff0000u + gdtOffset + 8).CopyTo(rom, gdtOffset + 2);
        BitConverter.GetBytes(0x00cf9a000000fffful).CopyTo(rom, gdtOffset + 16);
        BitConverter.GetBytes(0x00cf92000000fffful).CopyTo(rom, gdtOffset + 24);
        return rom;
    }

    /// <summary>Writes <paramref name="rom"/> to a temporary file and returns its path.</summary>
    public static string ToFile(byte[] rom)
    {
        string path = Path.Combine(Path.GetTempPath(), $"hyve-rom-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(path, rom);
        return path;
    }

    /// <summary>Emits real-mode code that prints AX as four hex digits on COM1 (clobbers AX, BX, CX, DX).</summary>
    public static void PrintHexAx(Assembler a, ushort port = 0x3f8)
    {
        a.mov(AssemblerRegisters.bx, AssemblerRegisters.ax);
        a.mov(AssemblerRegisters.cx, 4);
        var digit = a.CreateLabel();
        var wait = a.CreateLabel();
        var isDigit = a.CreateLabel();
        a.Label(ref digit);
        a.rol(AssemblerRegisters.bx, 4);
        a.mov(AssemblerRegisters.dx, (ushort)(port + 5));
        a.Label(ref wait);
        a.@in(AssemblerRegisters.al, AssemblerRegisters.dx);
        a.test(AssemblerRegisters.al, 0x20);
        a.jz(wait);
        a.mov(AssemblerRegisters.al, AssemblerRegisters.bl);
        a.and(AssemblerRegisters.al, 0x0f);
        a.add(AssemblerRegisters.al, (byte)'0');
        a.cmp(AssemblerRegisters.al, (byte)'9');
        a.jbe(isDigit);
        a.add(AssemblerRegisters.al, (byte)('a' - '9' - 1));
        a.Label(ref isDigit);
        a.mov(AssemblerRegisters.dx, port);
        a.@out(AssemblerRegisters.dx, AssemblerRegisters.al);
        a.loop(digit);
    }

    /// <summary>Emits code that prints <paramref name="text"/> on the UART at <paramref name="port"/> (polling LSR.THRE).</summary>
    public static void Print(Assembler a, string text, ushort port = 0x3f8)
    {
        foreach (char c in text)
        {
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.mov(AssemblerRegisters.dx, (ushort)(port + 5));
            a.@in(AssemblerRegisters.al, AssemblerRegisters.dx);
            a.test(AssemblerRegisters.al, 0x20);
            a.jz(wait);
            a.mov(AssemblerRegisters.dx, port);
            a.mov(AssemblerRegisters.al, (byte)c);
            a.@out(AssemblerRegisters.dx, AssemblerRegisters.al);
        }
    }
}
