// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // x87 and SSE control instructions (the ones KVM's in-kernel emulator refuses). Their state lives in
    // CpuState.Fx, the FXSAVE image, so FXSAVE/FXRSTOR are copies of it.

    private const ushort FswEs = 0x80, FswB = 0x8000;

    /// <summary>#NM for x87 instructions when CR0.EM or CR0.TS is set (SDM Vol. 3 2.5).</summary>
    private bool X87Available()
    {
        if ((_cpu.Cr0 & (CpuState.Cr0Em | CpuState.Cr0Ts)) != 0) { Raise(PendingException.Nm); return false; }
        return true;
    }

    /// <summary>A waiting x87 instruction first delivers a pending unmasked exception (#MF with CR0.NE).</summary>
    private bool NoPendingX87()
    {
        if ((_cpu.Fsw & FswEs) != 0 && (_cpu.Cr0 & 0x20) != 0) { Raise(new PendingException(Vector.MF, false, 0, 0)); return false; }
        return true;
    }

    private bool StoreWord(ref Instruction i, ushort v)
    {
        if (i.Op0Kind == OpKind.Register) { SetGpr(_cpu, Register.AX, v); return true; }
        return WriteOp(ref i, 0, 2, v);
    }

    private static Exec Fninit(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Available()) return Exec.Fault;
        e._cpu.FxInit();
        return Exec.Next;
    }

    private static Exec Finit(InstructionEngine e, ref Instruction i)
        => e.X87Available() && e.NoPendingX87() ? Fninit(e, ref i) : Exec.Fault;

    private static Exec Fwait(InstructionEngine e, ref Instruction i)
    {
        const ulong mpTs = CpuState.Cr0Ts | 2;
        if ((e._cpu.Cr0 & mpTs) == mpTs) return e.Raise(PendingException.Nm);
        return e.NoPendingX87() ? Exec.Next : Exec.Fault;
    }

    private static Exec Fnstcw(InstructionEngine e, ref Instruction i)
        => e.X87Available() && e.StoreWord(ref i, e._cpu.Fcw) ? Exec.Next : Exec.Fault;

    private static Exec Fstcw(InstructionEngine e, ref Instruction i)
        => e.X87Available() && e.NoPendingX87() ? Fnstcw(e, ref i) : Exec.Fault;

    private static Exec Fnstsw(InstructionEngine e, ref Instruction i)
        => e.X87Available() && e.StoreWord(ref i, e._cpu.Fsw) ? Exec.Next : Exec.Fault;

    private static Exec Fstsw(InstructionEngine e, ref Instruction i)
        => e.X87Available() && e.NoPendingX87() ? Fnstsw(e, ref i) : Exec.Fault;

    private static Exec Fldcw(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Available() || !e.NoPendingX87()) return Exec.Fault;
        if (!e.ReadOp(ref i, 0, 2, out ulong v)) return Exec.Fault;
        var c = e._cpu;
        c.Fcw = (ushort)(v | 0x40); // bit 6 reads as 1
        // Exceptions flagged in FSW that the new control word unmasks become pending (ES and B set).
        ushort fsw = c.Fsw;
        bool pending = (fsw & 0x3f & ~c.Fcw) != 0;
        c.Fsw = pending ? (ushort)(fsw | FswEs | FswB) : (ushort)(fsw & ~(FswEs | FswB));
        return Exec.Next;
    }

    private static Exec Fnclex(InstructionEngine e, ref Instruction i)
    {
        if (!e.X87Available()) return Exec.Fault;
        e._cpu.Fsw &= 0x7f00; // clears PE UE OE ZE DE IE SF ES and B
        return Exec.Next;
    }

    private static Exec Fclex(InstructionEngine e, ref Instruction i)
        => e.X87Available() && e.NoPendingX87() ? Fnclex(e, ref i) : Exec.Fault;

    /// <summary>Checks and linearizes a 512-byte FXSAVE area: 16-byte alignment else #GP(0).</summary>
    private bool FxArea(ref Instruction i, PageAccess access, out ulong la)
    {
        la = 0;
        if ((_cpu.Cr0 & (CpuState.Cr0Em | CpuState.Cr0Ts)) != 0) { Raise(PendingException.Nm); return false; }
        ulong ea = EffectiveAddress(ref i, out _);
        var r = Segmentation.Linearize(_cpu, SegOf(i.MemorySegment), ea, 512, access, out la);
        if (!r.IsOk) { _fault = r; return false; }
        if ((la & 15) != 0) { Raise(PendingException.Gp0); return false; }
        return true;
    }

    private int FxXmmEnd() => _bitness == 64 ? 160 + 16 * 16 : 160 + 16 * 8;

    private static Exec Fxsave(InstructionEngine e, ref Instruction i)
    {
        if (!e.FxArea(ref i, PageAccess.Write, out ulong la)) return Exec.Fault;
        var c = e._cpu;
        BinaryPrimitives.WriteUInt32LittleEndian(c.Fx.AsSpan(28), CpuState.MxcsrMask);
        // Bytes 464-511 are left to software; XMM8-15 exist only in 64-bit mode.
        var r = e._mem.CopyToGuest(c, la, c.Fx.AsSpan(0, e.FxXmmEnd()));
        return r.IsOk ? Exec.Next : e.Fail(r);
    }

    private static Exec Fxrstor(InstructionEngine e, ref Instruction i)
    {
        if (!e.FxArea(ref i, PageAccess.Read, out ulong la)) return Exec.Fault;
        var c = e._cpu;
        Span<byte> img = stackalloc byte[416];
        int n = e.FxXmmEnd();
        var r = e._mem.CopyFromGuest(c, la, img[..n]);
        if (!r.IsOk) return e.Fail(r);
        if ((BinaryPrimitives.ReadUInt32LittleEndian(img[24..]) & ~CpuState.MxcsrMask) != 0) return e.Raise(PendingException.Gp0);
        img[..28].CopyTo(c.Fx); // MXCSR_MASK (28..31) is read-only
        img[32..n].CopyTo(c.Fx.AsSpan(32));
        return Exec.Next;
    }

    /// <summary>LDMXCSR/STMXCSR: #UD without CR4.OSFXSR or with CR0.EM, #NM with CR0.TS.</summary>
    private bool SseAvailable()
    {
        var c = _cpu;
        if ((c.Cr0 & CpuState.Cr0Em) != 0 || (c.Cr4 & CpuState.Cr4Osfxsr) == 0) { Raise(PendingException.Ud); return false; }
        if ((c.Cr0 & CpuState.Cr0Ts) != 0) { Raise(PendingException.Nm); return false; }
        return true;
    }

    private static Exec Ldmxcsr(InstructionEngine e, ref Instruction i)
    {
        if (!e.SseAvailable() || !e.ReadOp(ref i, 0, 4, out ulong v)) return Exec.Fault;
        if ((v & ~(ulong)CpuState.MxcsrMask) != 0) return e.Raise(PendingException.Gp0);
        e._cpu.Mxcsr = (uint)v;
        return Exec.Next;
    }

    private static Exec Stmxcsr(InstructionEngine e, ref Instruction i)
        => e.SseAvailable() && e.WriteOp(ref i, 0, 4, e._cpu.Mxcsr) ? Exec.Next : Exec.Fault;
}
