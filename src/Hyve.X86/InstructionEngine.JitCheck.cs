// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.X86.Jit;
using Iced.Intel;

namespace Hyve.X86;

/// <summary>
/// The translator's lockstep check against the interpreter on a running guest (HYVE_JIT_CHECK=1, or
/// <see cref="Translator.CheckAgainstInterpreter"/>): every translated block runs once with its stores logged (old
/// bytes kept), then its stores are undone, the state put back, and the interpreter runs as many instructions as the
/// block retired; registers, RIP, the defined status flags and the bytes stored must agree. The interpreter's result
/// is kept, so the guest goes on as it would without translation, and each divergence is printed to stderr with the
/// block's code: the first one names the bad translation.
/// </summary>
public sealed unsafe partial class InstructionEngine
{
    private sealed class WriteWatch : ILinearAccessObserver
    {
        public readonly List<(ulong La, int Size)> Writes = [];
        public void OnDataAccess(ulong linear, int size, PageAccess access)
        {
            if (access == PageAccess.Write) Writes.Add((linear, size));
        }
    }

    private readonly ulong[] _chkPre = new ulong[18], _chkJit = new ulong[18];
    private WriteWatch? _chkWatch;
    private Decoder? _chkDec;
    private readonly ByteArrayCodeReader _chkReader = new(new byte[1]);

    /// <summary>Lockstep check: count divergences without printing them (tests that break a translation on purpose).</summary>
    public bool QuietJitCheck { get; set; }

    /// <summary>Blocks the lockstep check did not compare because they read a flag an earlier instruction left undefined.</summary>
    public long UndefinedFlagReads { get; private set; }

    /// <summary>Divergences found by the lockstep check.</summary>
    public long JitDivergences { get; private set; }

    private int CheckedRun(CpuState cpu, Translator jit, JitBlock jb, IGuestPorts? ports, out bool interpret)
    {
        var s = cpu.Block;
        for (int r = 0; r < 16; r++) _chkPre[r] = s->Gpr[r];
        _chkPre[16] = s->Rip; _chkPre[17] = s->Rflags;
        byte shadow = cpu.InterruptShadow;
        JitTlb.FlushWrites(s); // every store takes the slow path, which logs it
        jit.WriteLog.Clear();
        jit.Checking = true;
        s->Retired = 0;
        int status;
        try { status = ((delegate* unmanaged<StateBlock*, long, int>)jb.Entry)(s, 0); }
        finally { jit.Checking = false; }
        int ran = (int)s->Retired;
        for (int r = 0; r < 16; r++) _chkJit[r] = s->Gpr[r];
        _chkJit[16] = s->Rip; _chkJit[17] = s->Rflags;
        var log = jit.WriteLog;
        var jitBytes = new ulong[log.Count];
        for (int k = 0; k < log.Count; k++) jitBytes[k] = Load(log[k].Host, log[k].Size);
        for (int k = log.Count - 1; k >= 0; k--) Store(log[k].Host, log[k].Size, log[k].Old);
        for (int r = 0; r < 16; r++) s->Gpr[r] = _chkPre[r];
        s->Rip = _chkPre[16]; s->Rflags = _chkPre[17];
        cpu.InterruptShadow = shadow;

        // The interpreter, from the same state, for as many instructions, its stores watched.
        var watch = _chkWatch ??= new WriteWatch();
        watch.Writes.Clear();
        var saveObs = _mem.Observer;
        bool savePages = _lastPages;
        _mem.Observer = watch;
        _lastPages = false;
        string? why = null;
        int done = 0;
        try
        {
            for (; done < ran; done++)
            {
                var r = Step(cpu, ports);
                if (r.Status != StepStatus.Ok) { why = $"interpreter stopped at instruction {done} ({r.Status}, {r.Exception.Vector})"; break; }
            }
        }
        finally
        {
            _mem.Observer = saveObs;
            _lastPages = savePages;
            _lastRead = _lastWrite = default;
            _cpu = cpu; _ports = ports; _bitness = cpu.CodeBitness;
        }

        // Flags the SDM leaves undefined after the instructions run are not compared.
        var dec = _chkDec ??= Decoder.Create(jb.Bitness, _chkReader, 0, DecoderOptions.None);
        var insns = new List<Instruction>();
        {
            var rd = new ByteArrayCodeReader(jb.Bytes, 0, jb.ByteLen);
            var d = Decoder.Create(jb.Bitness, rd, jb.Rip, DecoderOptions.None);
            while (rd.CanReadByte && insns.Count < jb.Count) insns.Add(d.Decode());
        }
        RflagsBits undef = 0;
        bool readsUndefined = false;
        for (int k = 0; k < ran && insns.Count > 0; k++)
        {
            var i = insns[k % insns.Count];
            // A later instruction that reads a flag the SDM left undefined (a Jcc after IMUL) may go either way: the
            // host's choice and the interpreter's need not agree, and the SDM allows both.
            if ((i.RflagsRead & undef) != 0) readsUndefined = true;
            undef = (undef & ~(i.RflagsModified & ~i.RflagsUndefined)) | i.RflagsUndefined;
        }
        if (readsUndefined) { why = null; UndefinedFlagReads++; }
        ulong undefArch = ((undef & RflagsBits.OF) != 0 ? 0x800ul : 0) | ((undef & RflagsBits.SF) != 0 ? 0x80ul : 0)
            | ((undef & RflagsBits.ZF) != 0 ? 0x40ul : 0) | ((undef & RflagsBits.AF) != 0 ? 0x10ul : 0)
            | ((undef & RflagsBits.PF) != 0 ? 0x4ul : 0) | ((undef & RflagsBits.CF) != 0 ? 0x1ul : 0);
        ulong flagMask = 0x8d5ul & ~undefArch;
        if (why is null && !readsUndefined)
        {
            for (int r = 0; r < 17 && why is null; r++)
            {
                ulong want = r < 16 ? s->Gpr[r] : s->Rip;
                if (want != _chkJit[r]) why = $"{(r < 16 ? ((Register)(Register.RAX + r)).ToString() : "RIP")} interp {want:x} jit {_chkJit[r]:x}";
            }
            if (why is null && ((s->Rflags ^ _chkJit[17]) & flagMask) != 0) why = $"RFLAGS interp {s->Rflags:x} jit {_chkJit[17]:x} (compared {flagMask:x})";
            if (why is null && watch.Writes.Count != log.Count) why = $"stores: interp {watch.Writes.Count} jit {log.Count}";
            for (int k = 0; why is null && k < log.Count; k++)
            {
                if (watch.Writes[k].La != log[k].La || watch.Writes[k].Size != log[k].Size)
                    why = $"store {k}: interp {watch.Writes[k].La:x}/{watch.Writes[k].Size} jit {log[k].La:x}/{log[k].Size}";
            }
            // The final bytes: the JIT's last store to each place against memory now (the interpreter's).
            for (int k = 0; why is null && k < log.Count; k++)
            {
                bool later = false;
                for (int j = k + 1; j < log.Count; j++) if (log[j].Host == log[k].Host) later = true;
                if (later) continue;
                ulong now = Load(log[k].Host, log[k].Size);
                if (now != jitBytes[k]) why = $"memory at {log[k].La:x}: interp {now:x} jit {jitBytes[k]:x}";
            }
        }
        if (why is not null)
        {
            JitDivergences++;
            if (JitDivergences <= 200 && !QuietJitCheck)
            {
                var sb = new System.Text.StringBuilder();
                sb.Append($"jit-check: divergence at gpa {jb.Gpa:x} rip {jb.Rip:x} bits {jb.Bitness} ran {ran} status {status}: {why}\n");
                sb.Append($"  before: rflags {_chkPre[17]:x}");
                for (int r = 0; r < 16; r++) sb.Append($" {(Register)(Register.RAX + r)}={_chkPre[r]:x}");
                sb.Append('\n');
                var f = new NasmFormatter();
                var o = new StringOutput();
                foreach (var i in insns) { f.Format(i, o); sb.Append($"  {i.IP:x}: {o.ToStringAndReset()}\n"); }
                Console.Error.Write(sb.ToString());
            }
        }
        interpret = why is not null || status == Translator.ExitInterpret;
        return done;
    }

    private static ulong Load(byte* p, int size) => size switch
    {
        1 => *p, 2 => *(ushort*)p, 4 => *(uint*)p, _ => *(ulong*)p,
    };

    private static void Store(byte* p, int size, ulong v)
    {
        switch (size)
        {
            case 1: *p = (byte)v; break;
            case 2: *(ushort*)p = (ushort)v; break;
            case 4: *(uint*)p = (uint)v; break;
            default: *(ulong*)p = v; break;
        }
    }
}
