// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.X86;

/// <summary>
/// The software TLB as SDM Vol. 3 4.10 describes a processor's: a paging-entry change is not seen until INVLPG or a CR3
/// write (the processor may keep using the cached translation), global pages survive CR3 writes with CR4.PGE, clearing
/// CR4.PGE drops them, PCID-tagged entries survive a MOV to CR3 with bit 63 set, and the walk that fills an entry sets
/// Accessed (and Dirty for writes).
/// </summary>
public class TlbTests
{
    private const ulong P = 1, RW = 2, A = 0x20, D = 0x40, G = 0x100;
    private const uint Code = 0x3000, Data = 0x10000, Data2 = 0x11000;

    private sealed class Machine
    {
        public readonly TestMemory Mem = new(1 << 20);
        public readonly CpuState Cpu = new();
        public readonly InstructionEngine Engine;
        public readonly Tlb Tlb;

        public Machine()
        {
            Engine = new InstructionEngine(Mem);
            Tlb = new Tlb(Engine.Memory.Walker);
            W32(0x20000, 0xaaaa); W32(0x21000, 0xbbbb); W32(0x22000, 0xcccc); W32(0x23000, 0xdddd);
        }

        public void W32(uint at, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(Mem.Ram.AsSpan((int)at), v);
        public void W64(uint at, ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(Mem.Ram.AsSpan((int)at), v);
        public ulong R64(uint at) => BinaryPrimitives.ReadUInt64LittleEndian(Mem.Ram.AsSpan((int)at));

        public void Load(int bitness, Action<Assembler> code)
        {
            var a = new Assembler(bitness);
            code(a);
            var ms = new MemoryStream();
            a.Assemble(new StreamCodeWriter(ms), Code);
            ms.ToArray().CopyTo(Mem.Ram, (int)Code);
            Cpu.Rip = Code;
        }

        public void Step(int n = 1)
        {
            for (int k = 0; k < n; k++)
            {
                var r = Engine.Step(Cpu);
                Assert.True(r.IsOk, $"{r.Status} {r.Exception} at {Cpu.Rip:x}");
            }
        }

        public ulong Reg(int n) => Cpu.Gpr[n];
    }

    // 32-bit paging: page directory at 0x1000, one page table at 0x2000 mapping the code page and two data pages.
    private static Machine Paged32(ulong cr4, ulong dataFlags)
    {
        var m = new Machine();
        m.W32(0x1000, 0x2000 | (uint)(P | RW));
        m.W32(0x2000 + 4 * 3, Code | (uint)(P | RW));
        m.W32(0x2000 + 4 * 0x10, 0x20000 | (uint)(P | RW | dataFlags));
        m.W32(0x2000 + 4 * 0x11, 0x21000 | (uint)(P | RW));
        m.Cpu.SetFlatProtectedMode(cr0Pg: true, cr3: 0x1000, cr4: cr4);
        return m;
    }

    [Fact]
    public void AChangedPteIsNotSeenUntilInvlpg()
    {
        var m = Paged32(0, 0);
        m.Load(32, a =>
        {
            a.mov(eax, __dword_ptr[Data]);
            a.mov(eax, __dword_ptr[Data]);
            a.invlpg(__byte_ptr[Data]);
            a.mov(eax, __dword_ptr[Data]);
        });
        m.Step();
        Assert.Equal(0xaaaaul, m.Reg(0));
        m.W32(0x2000 + 4 * 0x10, 0x22000 | (uint)(P | RW)); // the guest edits the PTE and does not invalidate
        m.Step();
        Assert.Equal(0xaaaaul, m.Reg(0)); // the cached translation is used, as a processor may
        m.Step(2);
        Assert.Equal(0xccccul, m.Reg(0)); // after INVLPG the new one is walked
    }

    [Fact]
    public void FillingWalkSetsAccessedAndAWriteSetsDirty()
    {
        var m = Paged32(0, 0);
        m.Load(32, a =>
        {
            a.mov(eax, __dword_ptr[Data]);
            a.mov(__dword_ptr[Data], eax);
        });
        m.Step();
        uint pte = BinaryPrimitives.ReadUInt32LittleEndian(m.Mem.Ram.AsSpan(0x2000 + 4 * 0x10));
        Assert.Equal(A, pte & (A | D));
        Assert.NotEqual(0u, BinaryPrimitives.ReadUInt32LittleEndian(m.Mem.Ram.AsSpan(0x1000)) & A);
        m.Step(); // a write through the entry filled by the read: walked again to set Dirty
        pte = BinaryPrimitives.ReadUInt32LittleEndian(m.Mem.Ram.AsSpan(0x2000 + 4 * 0x10));
        Assert.Equal(A | D, pte & (A | D));
    }

    [Fact]
    public void GlobalPagesSurviveACr3WriteAndClearingPgeDropsThem()
    {
        var m = Paged32(Tlb.Cr4Pge, G);
        m.Load(32, a =>
        {
            a.mov(eax, __dword_ptr[Data]);
            a.mov(ebx, __dword_ptr[Data2]);
            a.mov(ecx, 0x1000);
            a.mov(cr3, ecx);
            a.mov(eax, __dword_ptr[Data]);
            a.mov(ebx, __dword_ptr[Data2]);
            a.mov(ecx, cr4);
            a.and(ecx, ~(int)Tlb.Cr4Pge);
            a.mov(cr4, ecx);
            a.mov(eax, __dword_ptr[Data]);
        });
        m.Step(2);
        Assert.Equal((0xaaaaul, 0xbbbbul), (m.Reg(0), m.Reg(3)));
        m.W32(0x2000 + 4 * 0x10, 0x22000 | (uint)(P | RW | G));
        m.W32(0x2000 + 4 * 0x11, 0x23000 | (uint)(P | RW));
        m.Step(4);
        Assert.Equal(0xaaaaul, m.Reg(0)); // global: kept across the CR3 write
        Assert.Equal(0xddddul, m.Reg(3)); // not global: walked again
        m.Step(4);
        Assert.Equal(0xccccul, m.Reg(0)); // a CR4.PGE change flushes everything
    }

    [Fact]
    public void MovToCr3WithBit63KeepsThePcidsEntriesAndWithoutItFlushesThem()
    {
        var m = new Machine();
        // 4-level paging: PML4 0x1000 -> PDPT 0x4000 -> PD 0x5000 -> PT 0x2000.
        m.W64(0x1000, 0x4000 | P | RW);
        m.W64(0x4000, 0x5000 | P | RW);
        m.W64(0x5000, 0x2000 | P | RW);
        m.W64(0x2000 + 8 * 3, Code | P | RW);
        m.W64(0x2000 + 8 * 0x10, 0x20000 | P | RW);
        m.Cpu.SetFlatLongMode(0x1000);
        m.Cpu.Cr4 |= CpuState.Cr4Pcide;
        m.Cpu.Cr3 = 0x1001; // PCID 1
        m.Load(64, a =>
        {
            a.mov(eax, __dword_ptr[Data]);
            a.mov(rcx, 0x8000_0000_0000_1001ul);
            a.mov(cr3, rcx);
            a.mov(eax, __dword_ptr[Data]);
            a.mov(rcx, 0x1001ul);
            a.mov(cr3, rcx);
            a.mov(eax, __dword_ptr[Data]);
        });
        m.Step();
        Assert.Equal(0xaaaaul, m.Reg(0));
        m.W64(0x2000 + 8 * 0x10, 0x22000 | P | RW);
        m.Step(3);
        Assert.Equal(0xaaaaul, m.Reg(0)); // bit 63 set: this PCID's entries are kept
        Assert.Equal(0x1001ul, m.Cpu.Cr3); // and bit 63 is not stored
        m.Step(3);
        Assert.Equal(0xccccul, m.Reg(0));
    }
}
