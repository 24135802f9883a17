// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Iced.Intel;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace Hyve.Tests.Soft;

/// <summary>
/// The software CPU's decoded-instruction cache and TLB seen from a guest: loops run the same as uncached, code patched
/// ahead of itself (same block, other page, REP STOSB) runs patched, and LOCK-prefixed increments from two vCPUs add up.
/// </summary>
public class SoftCacheTests
{
    private static (VmStop Stop, byte[] Low) RunRom(byte[] rom, int cpus = 1)
    {
        using var clock = new TimerQueue();
        using var mem = new GuestMemory(16 << 20);
        var vm = new Vm("t", new CpuTopology(cpus, 1, 1, cpus), mem, clock);
        string path = GuestRom.ToFile(rom);
        try
        {
            BootRom.Load(mem, path, null);
            var stop = vm.Run(v => new SoftBackend(v));
            Assert.True(mem.TryGetSpan(0, 0x100000, MemProt.Read, out var low));
            return (stop, low.ToArray());
        }
        finally { File.Delete(path); }
    }

    private static uint U32(byte[] m, int at) => BitConverter.ToUInt32(m, at);

    [Fact]
    public void IntegerLoopFromRomComputesWhatTheArithmeticSays()
    {
        const uint n = 100_000;
        var r = RunRom(GuestRom.RealMode(a =>
        {
            a.mov(ecx, n);
            a.xor(eax, eax);
            a.xor(ebx, ebx);
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.add(eax, ecx);
            a.xor(ebx, eax);
            a.dec(ecx);
            a.jnz(loop);
            a.xor(dx, dx);
            a.mov(ds, dx);
            a.mov(__dword_ptr[0x500], eax);
            a.mov(__dword_ptr[0x504], ebx);
            a.cli();
            a.hlt();
        }));
        Assert.Null(r.Stop.Error);
        uint ea = 0, eb = 0;
        for (uint c = n; c != 0; c--) { ea += c; eb ^= ea; }
        Assert.Equal(ea, U32(r.Low, 0x500));
        Assert.Equal(eb, U32(r.Low, 0x504));
    }

    // Copies code into RAM at 0000:address (DS = 0) and jumps there.
    private static byte[] RomRunningFromRam(ushort address, byte[] code, Action<Assembler>? setup = null) => GuestRom.RealMode(a =>
    {
        a.xor(ax, ax);
        a.mov(ds, ax);
        a.mov(es, ax);
        a.mov(ss, ax);
        a.mov(sp, 0x7000);
        setup?.Invoke(a);
        for (int k = 0; k < code.Length; k++) a.mov(__byte_ptr[(ushort)(address + k)], code[k]);
        a.db(0xea, (byte)address, (byte)(address >> 8), 0, 0); // jmp far 0000:address
    });

    [Fact]
    public void CodePatchedAheadOfItselfInTheSameBlockRunsPatched()
    {
        // 1000: mov cx,5 / xor bx,bx
        // 1005: mov [100Ah],cl   ; patches the immediate of the next instruction, in the same straight-line block
        // 1009: mov al,0         ; runs as mov al,cl
        // 100B: add bl,al / dec cx / jnz 1005 / mov [0500h],bx / cli / hlt
        byte[] code =
        [
            0xb9, 0x05, 0x00, 0x31, 0xdb,
            0x88, 0x0e, 0x0a, 0x10,
            0xb0, 0x00,
            0x00, 0xc3, 0x49, 0x75, 0xf5,
            0x89, 0x1e, 0x00, 0x05, 0xfa, 0xf4,
        ];
        var r = RunRom(RomRunningFromRam(0x1000, code));
        Assert.Null(r.Stop.Error);
        Assert.Equal(SuspendHow.Halt, r.Stop.How);
        Assert.Equal(5u + 4 + 3 + 2 + 1, U32(r.Low, 0x500) & 0xffff); // code decoded before each patch would give 0 + 5 + 4 + 3 + 2
    }

    [Fact]
    public void CodePatchedOnAnotherPageRunsPatchedWhenCalled()
    {
        // 1000: mov cx,5 / xor bx,bx
        // 1005: mov [2001h],cl / call 2000h / add bl,al / dec cx / jnz 1005 / mov [0500h],bx / cli / hlt
        // 2000: mov al,0 / ret   (the immediate is patched from the other page before every call)
        byte[] code =
        [
            0xb9, 0x05, 0x00, 0x31, 0xdb,
            0x88, 0x0e, 0x01, 0x20,
            0xe8, 0xf4, 0x0f,             // call 2000h (next IP 100Ch + 0FF4h)
            0x00, 0xc3, 0x49, 0x75, 0xf4,
            0x89, 0x1e, 0x00, 0x05, 0xfa, 0xf4,
        ];
        var r = RunRom(RomRunningFromRam(0x1000, code, a =>
        {
            a.mov(__byte_ptr[0x2000], 0xb0);
            a.mov(__byte_ptr[0x2001], 0x00);
            a.mov(__byte_ptr[0x2002], 0xc3);
        }));
        Assert.Null(r.Stop.Error);
        Assert.Equal(SuspendHow.Halt, r.Stop.How);
        Assert.Equal(5u + 4 + 3 + 2 + 1, U32(r.Low, 0x500) & 0xffff);
    }

    [Fact]
    public void RepStosbOverwritingCodeAheadIsSeen()
    {
        // 1000: mov dx,5 / xor bx,bx
        // 1005: mov al,dl / mov di,1013h / mov cx,1 / rep stosb   ; writes the immediate of the mov at 1012h
        // 100F: nop / nop / nop
        // 1012: mov al,0 / add bl,al / dec dx / jnz 1005 / mov [0500h],bx / cli / hlt
        byte[] code =
        [
            0xba, 0x05, 0x00, 0x31, 0xdb,
            0x88, 0xd0, 0xbf, 0x13, 0x10, 0xb9, 0x01, 0x00, 0xf3, 0xaa,
            0x90, 0x90, 0x90,
            0xb0, 0x00, 0x00, 0xc3, 0x4a, 0x75, 0xec,
            0x89, 0x1e, 0x00, 0x05, 0xfa, 0xf4,
        ];
        var r = RunRom(RomRunningFromRam(0x1000, code));
        Assert.Null(r.Stop.Error);
        Assert.Equal(SuspendHow.Halt, r.Stop.How);
        Assert.Equal(5u + 4 + 3 + 2 + 1, U32(r.Low, 0x500) & 0xffff);
    }

    [Fact]
    public void LockIncFromTwoVcpusLosesNoIncrement()
    {
        const uint n = 100_000;
        // The AP (started at 0800:0000 by SIPI vector 8, DS base 0): n times lock inc dword [0600h], then lock inc byte [0604h].
        var apAsm = new Assembler(16);
        apAsm.mov(ecx, n);
        var apLoop = apAsm.CreateLabel();
        apAsm.Label(ref apLoop);
        apAsm.@lock.inc(__dword_ptr[0x600]);
        apAsm.dec(ecx);
        apAsm.jnz(apLoop);
        apAsm.@lock.inc(__byte_ptr[0x604]);
        apAsm.cli();
        apAsm.hlt();
        var ms = new MemoryStream();
        apAsm.Assemble(new StreamCodeWriter(ms), 0);
        byte[] ap = ms.ToArray();
        var r = RunRom(GuestRom.ProtectedMode32(a =>
        {
            for (int k = 0; k < ap.Length; k++) a.mov(__byte_ptr[0x8000 + (uint)k], ap[k]);
            a.mov(__dword_ptr[0xfee000f0], 0x1ff);      // SVR: software-enable the BSP's APIC
            a.mov(__dword_ptr[0xfee00310], 0);
            a.mov(__dword_ptr[0xfee00300], 0x000c4500); // INIT to all but self
            a.mov(__dword_ptr[0xfee00300], 0x000c4608); // start-up, vector 8
            a.mov(ecx, n);
            var loop = a.CreateLabel();
            a.Label(ref loop);
            a.@lock.inc(__dword_ptr[0x600]);
            a.dec(ecx);
            a.jnz(loop);
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.pause();
            a.cmp(__byte_ptr[0x604], 1);
            a.jne(spin);
            a.cli();
            a.hlt();
        }), cpus: 2);
        Assert.Null(r.Stop.Error);
        Assert.Equal(2 * n, U32(r.Low, 0x600));
    }
}
