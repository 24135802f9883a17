// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>Code and data in read-only memory (a boot ROM, as firmware runs in place): read through spans, writes dropped.</summary>
public class RomFetchTests
{
    private const ulong RomBase = 0x10000;

    /// <summary>RAM below 64 KiB, a 64 KiB ROM above it that is readable as spans but never writable.</summary>
    private sealed class RomMemory : IGuestPhysicalMemory
    {
        public readonly byte[] Ram = new byte[0x10000];
        public readonly byte[] Rom = new byte[0x10000];
        public int MmioReads, MmioWrites;

        public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
        {
            span = gpa + (ulong)length <= (ulong)Ram.Length ? Ram.AsSpan((int)gpa, length) : default;
            return gpa + (ulong)length <= (ulong)Ram.Length;
        }

        public bool TryGetReadSpan(ulong gpa, int length, out ReadOnlySpan<byte> span)
        {
            if (TryGetSpan(gpa, length, out var s)) { span = s; return true; }
            bool rom = gpa >= RomBase && gpa + (ulong)length <= RomBase + (ulong)Rom.Length;
            span = rom ? Rom.AsSpan((int)(gpa - RomBase), length) : default;
            return rom;
        }

        public bool TryReadMmio(ulong gpa, int size, out ulong value)
        {
            MmioReads++;
            value = 0;
            if (gpa < RomBase || gpa + (ulong)size > RomBase + (ulong)Rom.Length) return false;
            for (int i = 0; i < size; i++) value |= (ulong)Rom[(int)(gpa - RomBase) + i] << (8 * i);
            return true;
        }

        public bool TryWriteMmio(ulong gpa, int size, ulong value)
        {
            MmioWrites++;
            return gpa >= RomBase && gpa < RomBase + (ulong)Rom.Length; // dropped, as a ROM does
        }
    }

    private sealed class Writer : CodeWriter
    {
        public readonly List<byte> Bytes = new();
        public override void WriteByte(byte value) => Bytes.Add(value);
    }

    [Fact]
    public void Code_and_data_in_rom_are_read_without_mmio_callbacks_and_writes_to_rom_are_dropped()
    {
        var mem = new RomMemory();
        var a = new Assembler(32);
        a.mov(eax, __dword_ptr[RomBase + 0x800]);
        a.mov(__dword_ptr[RomBase + 0x800], ebx);
        a.add(eax, 1);
        var w = new Writer();
        a.Assemble(w, RomBase);
        w.Bytes.ToArray().CopyTo(mem.Rom, 0);
        mem.Rom[0x800] = 0x44; mem.Rom[0x801] = 0x33;
        var cpu = new CpuState();
        cpu.SetFlatProtectedMode();
        cpu.Rip = RomBase;
        cpu.Gpr[3] = 0xdeadbeef;
        var engine = new InstructionEngine(mem);
        for (int k = 0; k < 3; k++) Assert.True(engine.Step(cpu).IsOk);
        Assert.Equal(0x3345ul, cpu.Gpr[0]);
        Assert.Equal(0x44, mem.Rom[0x800]);
        Assert.Equal(1, mem.MmioWrites); // the store went to the bus and was dropped
        Assert.Equal(0, mem.MmioReads);  // fetches and the load were span copies
    }
}
