// SPDX-License-Identifier: BSD-2-Clause
using Hyve.X86.Jit;

namespace Hyve.X86;

/// <summary>The engine's side of binary translation: entering translated blocks from <see cref="Run"/>.</summary>
public sealed unsafe partial class InstructionEngine
{
    /// <summary>The translator whose blocks <see cref="Run"/> prefers to the interpreter's (null: interpret only).</summary>
    public Translator? Jit
    {
        get => _jit;
        set
        {
            _jit = value;
            if (value is not null) value.Engine = this;
        }
    }

    private Translator? _jit;
    private ulong _jitTlbEpoch = ulong.MaxValue;
    private int _jitTlbKey = -1;
    private CpuState? _jitTlbCpu;

    // The translated code's TLB caches the engine's TLB for one CPL and one RFLAGS.AC (SMAP): flush it whenever any of
    // them, or the guest-physical map behind the host pointers, may have changed since it was filled.
    private void PrepareTranslated(CpuState cpu, Translator jit, Tlb tlb)
    {
        jit.Cpu = cpu;
        var s = cpu.Block;
        s->Owner = jit.SelfHandle;
        // 64-bit mode uses only the FS and GS bases, and no segment load happens inside a Run call's translated code.
        s->FsBase = cpu.Segs[(int)Seg.Fs].Descriptor.Base;
        s->GsBase = cpu.Segs[(int)Seg.Gs].Descriptor.Base;
        if (_mem.Walker.Memory is IGuestHostMemory host) jit.SeeMapVersion(Volatile.Read(ref host.Version.Value));
        int key = cpu.Cpl | ((cpu.Rflags & CpuState.FlagAc) != 0 ? 4 : 0);
        if (tlb.Epoch != _jitTlbEpoch || key != _jitTlbKey || !tlb.MapUnchanged || _jitTlbCpu != cpu)
        {
            JitTlb.FlushAll(s);
            _jitTlbEpoch = tlb.Epoch;
            _jitTlbKey = key;
            _jitTlbCpu = cpu;
        }
    }

    // Runs one translated block (looping on itself while the budget lasts). True when the instruction at the new RIP must
    // be run by the interpreter (the block stopped before an access it could not make inline).
    private bool RunTranslated(CpuState cpu, Translator jit, JitBlock jb, int budget, Tlb tlb, ref int executed, IGuestPorts? ports)
    {
        var s = cpu.Block;
        // The interpreter may have changed a base since the last block (WRFSBASE/WRGSBASE do not end a Run call).
        s->FsBase = cpu.Segs[(int)Seg.Fs].Descriptor.Base;
        s->GsBase = cpu.Segs[(int)Seg.Gs].Descriptor.Base;
        if (tlb.Epoch != _jitTlbEpoch || !tlb.MapUnchanged)
        {
            JitTlb.FlushAll(s);
            _jitTlbEpoch = tlb.Epoch;
        }
        if (s_audit) AuditJitTlb(cpu, tlb, jb);
        if (jit.CheckAgainstInterpreter)
        {
            int done = CheckedRun(cpu, jit, jb, ports, out bool interp);
            executed += done;
            jit.InstructionsRun += done;
            return interp;
        }
        long iterations = Math.Max(1, budget / jb.Count);
        s->Retired = 0;
        int status = ((delegate* unmanaged<StateBlock*, long, int>)jb.Entry)(s, iterations - 1);
        int ran = (int)s->Retired;
        if (status == Translator.ExitNext) jit.NoteExit(s->ChainSlot, s->Rip);
        executed += ran;
        jit.InstructionsRun += ran;
        if (ran > 0) cpu.InterruptShadow = 0;
        if (JitStats.On) JitStats.Block(ran, status == Translator.ExitInterpret, JitStats.CodeAt(jb, cpu.Rip, cpu.CodeBitness), cpu.CodeBitness);
        return status == Translator.ExitInterpret;
    }

    private static readonly bool s_audit = Environment.GetEnvironmentVariable("HYVE_JIT_AUDIT") == "1";
    private long _audits;

    // Debugging aid (HYVE_JIT_AUDIT=1): every entry of the translated code's TLB must still be what the engine's TLB says.
    private void AuditJitTlb(CpuState cpu, Tlb tlb, JitBlock jb)
    {
        var s = cpu.Block;
        for (int w = 0; w < 2; w++)
        {
            var t = (ulong*)((byte*)s + (w == 1 ? StateBlock.WriteTlbOffset : StateBlock.ReadTlbOffset));
            for (int e = 0; e < StateBlock.JitTlbEntries; e++)
            {
                ulong vpn = t[2 * e];
                if (vpn == JitTlb.Empty) continue;
                ulong la = vpn << 12;
                var r = tlb.Translate(cpu, la, w == 1 ? PageAccess.Write : PageAccess.Read, out ulong gpa, out byte* host, out bool writable);
                byte* have = (byte*)(t[2 * e + 1] + la);
                if (!r.IsOk || host != have || (w == 1 && !writable))
                {
                    if (++_audits <= 50)
                        Console.Error.WriteLine($"jit-audit: stale {(w == 1 ? "write" : "read")} entry la {la:x} before block rip {jb.Rip:x} (now ok={r.IsOk} gpa {gpa:x}) cpl {cpu.Cpl} cr3 {cpu.Cr3:x}");
                    t[2 * e] = JitTlb.Empty;
                }
            }
        }
    }
}
