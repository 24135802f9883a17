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

    /// <summary>Writes <paramref name="rom"/> to a temporary file and returns its path.</summary>
    public static string ToFile(byte[] rom)
    {
        string path = Path.Combine(Path.GetTempPath(), $"hyve-rom-{Guid.NewGuid():N}.bin");
        File.WriteAllBytes(path, rom);
        return path;
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
