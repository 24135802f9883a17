// SPDX-License-Identifier: BSD-2-Clause
using System.Text;
using Hyve.X86;
using Iced.Intel;
using Xunit;
using IcedCode = Iced.Intel.Code;

namespace Hyve.Tests.X86;

/// <summary>
/// Issue 17's audit: every instruction form Iced knows either executes on the engine or raises an exception vector
/// (the architecture's answer for the modelled CPU); none stops the VM with "not implemented". The forms are found by
/// decoding a sweep of encodings (legacy maps 1-byte, 0F, 0F38, 0F3A with each mandatory prefix and REX.W, VEX and
/// EVEX, 3DNow!), and each runs once from a prepared state of its bitness (flat memory, a valid stack, CR4.OSFXSR,
/// every general register pointing into RAM). A form the sweep does not reach must at least have semantics in the table.
/// </summary>
public sealed class InstructionCoverageTests
{
    /// <summary>
    /// Forms whose CPUID feature the model reports but that the engine does not implement. Keep it empty: each entry
    /// would be a guest-visible gap (the VM stops with "not implemented").
    /// </summary>
    private static readonly HashSet<IcedCode> AllowedUnimplemented = new();

    private static IEnumerable<byte[]> Sweep(int bitness)
    {
        var prefixes = new List<byte[]> { Array.Empty<byte>(), new byte[] { 0x66 }, new byte[] { 0xf2 }, new byte[] { 0xf3 } };
        if (bitness == 64) { prefixes.Add(new byte[] { 0x48 }); prefixes.Add(new byte[] { 0x66, 0x48 }); prefixes.Add(new byte[] { 0xf3, 0x48 }); prefixes.Add(new byte[] { 0xf2, 0x48 }); }
        else prefixes.Add(new byte[] { 0x67 });
        var maps = new[] { Array.Empty<byte>(), new byte[] { 0x0f }, new byte[] { 0x0f, 0x38 }, new byte[] { 0x0f, 0x3a } };
        byte[] modrms = { 0x00, 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0xc0, 0xc8, 0xd0, 0xd8, 0xe0, 0xe8, 0xf0, 0xf8,
                          0xc1, 0xc9, 0xd1, 0xd9, 0xe1, 0xe9, 0xf1, 0xf9, 0xc2, 0xca, 0xd2, 0xda, 0xe2, 0xea, 0xf2, 0xfa,
                          0xc3, 0xcb, 0xd3, 0xdb, 0xe3, 0xeb, 0xf3, 0xfb, 0xc4, 0xcc, 0xd4, 0xdc, 0xe4, 0xec, 0xf4, 0xfc,
                          0xc5, 0xcd, 0xd5, 0xdd, 0xe5, 0xed, 0xf5, 0xfd, 0xc6, 0xce, 0xd6, 0xde, 0xe6, 0xee, 0xf6, 0xfe,
                          0xc7, 0xcf, 0xd7, 0xdf, 0xe7, 0xef, 0xf7, 0xff };
        var tail = new byte[8];
        foreach (var p in prefixes)
            foreach (var m in maps)
                for (int op = 0; op < 256; op++)
                    foreach (var modrm in modrms)
                        yield return Concat(p, m, new[] { (byte)op, modrm }, tail);
        // 3DNow!: 0F 0F modrm imm8, the opcode in the trailing byte.
        for (int suffix = 0; suffix < 256; suffix++) yield return new byte[] { 0x0f, 0x0f, 0xc1, (byte)suffix };
        // VEX (C4: maps 1-3, W, L, pp; vvvv = 1111) and EVEX (62: maps 1-3, W, L'L, pp).
        for (int map = 1; map <= 3; map++)
            for (int w = 0; w < 2; w++)
                for (int l = 0; l < 2; l++)
                    for (int pp = 0; pp < 4; pp++)
                        for (int op = 0; op < 256; op++)
                            foreach (byte modrm in new byte[] { 0x00, 0xc1, 0x08, 0xc9, 0x10, 0xd1, 0x18, 0xd9, 0x20, 0xe1, 0x28, 0xe9, 0x30, 0xf1, 0x38, 0xf9 })
                            {
                                yield return Concat(new byte[] { 0xc4, (byte)(0xe0 | map), (byte)(w << 7 | 0x78 | l << 2 | pp), (byte)op, modrm }, tail);
                                for (int ll = 0; ll < 3; ll++)
                                    yield return Concat(new byte[] { 0x62, (byte)(0xf0 | map), (byte)(w << 7 | 0x7c | pp), (byte)(ll << 5 | 0x08), (byte)op, modrm }, tail);
                            }
    }

    private static byte[] Concat(params byte[][] parts)
    {
        var r = new byte[parts.Sum(p => p.Length)];
        int at = 0;
        foreach (var p in parts) { p.CopyTo(r, at); at += p.Length; }
        return r;
    }

    private static CpuState Prepared(int bitness)
    {
        var cpu = new CpuState();
        if (bitness == 64) cpu.SetFlatLongMode(0x10000);
        else if (bitness == 32) { cpu.SetFlatProtectedMode(); cpu.Cr4 = CpuState.Cr4Osfxsr; }
        else
        {
            cpu.Cr4 = CpuState.Cr4Osfxsr;
            for (int s = 0; s < 6; s++) cpu.Segs[s] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, s == (int)Seg.Cs ? 0x9bu : 0x93u));
        }
        cpu.Rip = 0x1000;
        for (int r = 0; r < 16; r++) cpu.Gpr[r] = 0x3000;
        cpu.Gpr[1] = 4;         // RCX: a short REP count
        cpu.Gpr[4] = 0x8000;    // RSP
        cpu.Gpr[2] = 0x70;      // RDX: a port nobody decodes
        return cpu;
    }

    [Theory]
    [InlineData("x86-64", "intel")]
    [InlineData("max", "intel")]
    [InlineData("max", "amd")]
    public void Every_iced_instruction_form_executes_or_raises_an_exception_never_stops_the_vm(string model, string vendor)
    {
        var mem = new TestMemory(4 << 20);
        mem.Write64(0x10000, 0x11000 | 3);
        mem.Write64(0x11000, 0x12000 | 3);
        mem.Write64(0x12000, 0x83); // 2 MiB identity page
        var cpuModel = CpuModel.Parse(vendor, model, null);
        var engine = new InstructionEngine(mem) { Model = cpuModel, Cpuid = new MinimalCpuidModel { Model = cpuModel } };
        var reached = new HashSet<IcedCode>();
        var failures = new StringBuilder();
        int executed = 0, raised = 0;
        foreach (int bitness in new[] { 64, 32, 16 })
        {
            var seen = new HashSet<IcedCode>();
            foreach (var bytes in Sweep(bitness))
            {
                var dec = Iced.Intel.Decoder.Create(bitness, new ByteArrayCodeReader(bytes), 0x1000, DecoderOptions.None);
                dec.Decode(out var insn);
                if (insn.Code == IcedCode.INVALID || !seen.Add(insn.Code)) continue;
                reached.Add(insn.Code);
                var cpu = Prepared(bitness);
                StepResult r;
                try { r = engine.Step(cpu, null, bytes.AsSpan(0, insn.Length)); }
                catch (Exception ex)
                {
                    failures.AppendLine($"{insn.Code} ({bitness}-bit {Convert.ToHexString(bytes, 0, insn.Length)}): threw {ex.GetType().Name}: {ex.Message}");
                    continue;
                }
                if (r.Status == StepStatus.Unsupported && !AllowedUnimplemented.Contains(insn.Code))
                    failures.AppendLine($"{insn.Code} ({bitness}-bit {Convert.ToHexString(bytes, 0, insn.Length)} \"{insn}\"): not implemented");
                else if (r.Status == StepStatus.Exception) raised++;
                else executed++;
            }
        }
        // Forms the sweep cannot reach (fixed operand encodings, prefixes it does not combine): the table must still
        // give each one semantics or a defined fault.
        int unreached = 0;
        foreach (var code in Enum.GetValues<IcedCode>())
        {
            // DeclareByte..DeclareQword and Zero_bytes are the assembler's data pseudo-codes, not instructions.
            if (code is IcedCode.INVALID or IcedCode.DeclareByte or IcedCode.DeclareWord or IcedCode.DeclareDword
                or IcedCode.DeclareQword or IcedCode.Zero_bytes || reached.Contains(code)) continue;
            unreached++;
            if (!InstructionEngine.IsSupported(code) && !AllowedUnimplemented.Contains(code))
                failures.AppendLine($"{code}: not reached by the sweep and has no semantics");
        }
        Assert.True(failures.Length == 0, $"{failures}\n(executed {executed}, raised {raised}, not reached by the sweep {unreached})");
        Assert.True(reached.Count > 3000, $"the sweep reached only {reached.Count} forms");
    }

    [Fact]
    public void Vex_forms_are_ud_without_avx_and_a_vex_prefix_is_ud_in_real_mode()
    {
        var mem = new TestMemory(4 << 20);
        mem.Write64(0x10000, 0x11000 | 3);
        mem.Write64(0x11000, 0x12000 | 3);
        mem.Write64(0x12000, 0x83);
        var engine = new InstructionEngine(mem);
        // VPADDD xmm0, xmm1, xmm2 (C5 F1 FE C2) and VZEROUPPER (C5 F8 77): CPUID.1:ECX.AVX is clear.
        foreach (var bytes in new[] { new byte[] { 0xc5, 0xf1, 0xfe, 0xc2 }, new byte[] { 0xc5, 0xf8, 0x77 } })
        {
            var cpu = Prepared(64);
            var r = engine.Step(cpu, null, bytes);
            Assert.Equal(StepStatus.Exception, r.Status);
            Assert.Equal(Vector.UD, r.Exception.Vector);
            Assert.Equal(0x1000ul, cpu.Rip);
        }
        // BEXTR eax, ecx, eax (C4 E2 78 F7 C1) runs in 64-bit mode with BMI1 but is #UD in real mode.
        engine.Model = CpuModel.Named("max", CpuVendor.Intel);
        var bextr = new byte[] { 0xc4, 0xe2, 0x78, 0xf7, 0xc1 };
        var lm = Prepared(64);
        lm.Gpr[0] = 0x0404; lm.Gpr[1] = 0xabcd;
        Assert.True(engine.Step(lm, null, bextr).IsOk);
        Assert.Equal(0xcul, lm.Gpr[0]);
        var rm = Prepared(16);
        var rr = engine.Step(rm, null, bextr);
        Assert.Equal(StepStatus.Exception, rr.Status);
        Assert.Equal(Vector.UD, rr.Exception.Vector);
    }
}
