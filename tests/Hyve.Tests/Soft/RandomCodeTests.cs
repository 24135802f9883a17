// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.Soft;
using Hyve.Vmm;
using Hyve.Vmm.Control;
using Hyve.X86;
using Xunit;
using Xunit.Abstractions;

namespace Hyve.Tests.Soft;

/// <summary>
/// Fuzz test of the software CPU: pages of random bytes run as code for a bounded number of instructions in real mode,
/// 16- and 32-bit protected mode, 64-bit long mode and compatibility mode, with a valid IVT or IDT (random interrupt and
/// trap gates, some with IST and DPL 3), a TSS for stack switches, page tables in long mode, external interrupts and
/// NMIs arriving at random points, and the platform's devices (8259s, PIT, RTC, IOAPIC, HPET, local APIC) behind the
/// ports and MMIO. The guest may fault, double fault, triple fault, halt or reach an instruction the engine does not
/// model; the host never throws. Seeds are fixed: a failure names the mode and page that reproduce it.
/// </summary>
public class RandomCodeTests(ITestOutputHelper output)
{
    /// <summary>Where random code starts in each page run.</summary>
    public enum FuzzMode
    {
        /// <summary>Real mode through the IVT.</summary>
        Real,
        /// <summary>16-bit protected mode (D=0 code segment, 286 and 386 gates).</summary>
        Protected16,
        /// <summary>32-bit protected mode, flat.</summary>
        Protected32,
        /// <summary>IA-32e 64-bit mode with 4-level paging.</summary>
        Long64,
        /// <summary>IA-32e compatibility mode (32-bit code under long mode).</summary>
        Compatibility,
    }

    private const int Pages = 500;            // per mode: 2,500 pages in all
    private const int StepsPerPage = 2000;    // instructions (and deliveries) per page at most
    private const int RamSize = 2 << 20;

    // Guest-physical layout.
    private const int Gdt = 0x1000, Idt = 0x2000, Tss = 0x3000, CodeBase = 0x10000, CodeSize = 0x10000;
    private const int Stack0 = 0x90000, Stack3 = 0xa0000, IstBase = 0xa1000, Pml4 = 0x100000;

    // Selectors.
    private const ushort Code0 = 0x08, Data0 = 0x10, CodeAlt = 0x18, Data16 = 0x20, TssSel = 0x28, Code3 = 0x3b, Data3 = 0x43;

    [Theory]
    [InlineData(FuzzMode.Real)]
    [InlineData(FuzzMode.Protected16)]
    [InlineData(FuzzMode.Protected32)]
    [InlineData(FuzzMode.Long64)]
    [InlineData(FuzzMode.Compatibility)]
    public void RandomCodeNeverThrowsOnTheHost(FuzzMode mode)
    {
        using var mem = new GuestMemory(RamSize);
        Assert.True(mem.TryGetSpan(0, RamSize, MemProt.Write, out _));
        var stats = new Stats();
        for (int page = 0; page < Pages; page++)
        {
            int seed = 7919 * (int)mode + 104729 * page;
            try
            {
                RunPage(mem, mode, seed, stats);
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                throw new InvalidOperationException($"host exception in {mode} page {page} (seed {seed}): {e.GetType().Name}: {e.Message}\n{e.StackTrace}", e);
            }
        }
        output.WriteLine($"{mode}: {Pages} pages, {stats}");
        // The runs went somewhere: instructions ran and events went through the IVT/IDT.
        Assert.True(stats.Steps > Pages * 20L, $"only {stats.Steps} instructions in {Pages} pages; {stats}");
        Assert.True(stats.Delivered > Pages, $"only {stats.Delivered} events delivered; {stats}");
    }

    /// <summary>
    /// The same seeds through the binary translator: every translated block runs in lockstep with the interpreter from
    /// the same state (<see cref="Hyve.X86.Jit.Translator.CheckAgainstInterpreter"/>) and must end in the same registers,
    /// RIP, defined status flags and stored bytes. With ADD translated as SUB the same run must report divergences.
    /// </summary>
    [Theory]
    [InlineData(FuzzMode.Real, false)]
    [InlineData(FuzzMode.Protected16, false)]
    [InlineData(FuzzMode.Protected32, false)]
    [InlineData(FuzzMode.Long64, false)]
    [InlineData(FuzzMode.Compatibility, false)]
    [InlineData(FuzzMode.Long64, true)]
    [InlineData(FuzzMode.Protected32, true)]
    public void RandomCodeTranslatedMatchesTheInterpreter(FuzzMode mode, bool breakAdd)
    {
        using var mem = new GuestMemory(RamSize);
        var stats = new Stats();
        long divergences = 0, translated = 0;
        int pages = breakAdd ? 40 : 150;
        for (int page = 0; page < pages; page++)
        {
            int seed = 7919 * (int)mode + 104729 * page;
            var (d, t) = RunPageTranslated(mem, mode, seed, stats, breakAdd);
            if (d > 0 && !breakAdd) output.WriteLine($"{mode} page {page} (seed {seed}): {d} divergences");
            divergences += d;
            translated += t;
        }
        output.WriteLine($"{mode}: {pages} pages, {translated} instructions translated, {divergences} divergences; {stats}");
        Assert.True(translated > pages * 5L, $"only {translated} translated instructions in {pages} pages");
        if (breakAdd) Assert.True(divergences > 0, "ADD translated as SUB went unnoticed");
        else Assert.Equal(0, divergences);
    }

    private static (long Divergences, long Translated) RunPageTranslated(GuestMemory mem, FuzzMode mode, int seed, Stats stats, bool breakAdd)
    {
        var rng = new Random(seed);
        mem.TryGetSpan(0, RamSize, MemProt.Write, out var ram);
        ram.Clear();
        rng.NextBytes(ram.Slice(CodeBase, CodeSize));
        var vm = new Vm("fuzz", new CpuTopology(1, 1, 1, 1), mem, new ManualClock());
        using var backend = new SoftBackend(vm);
        var vcpu = (SoftVcpu)backend.CreateVcpu(0);
        var phys = new SoftPhysicalMemory(vm, vcpu.Lapic);
        var tsc = new HostTsc();
        var engine = new InstructionEngine(phys)
        {
            Cpuid = new SoftCpuid(vm.Topology, 0),
            Msrs = new SoftMsrs(vcpu.Lapic, tsc, true),
            Tsc = tsc,
            MaxRepIterations = 4096,
            QuietJitCheck = breakAdd,
        };
        _ = new Tlb(engine.Memory.Walker);
        using var jit = new Hyve.X86.Jit.Translator(1 << 20) { HotThreshold = 1, CheckAgainstInterpreter = true, BreakAddForTests = breakAdd };
        engine.Jit = jit;
        var cpu = new CpuState();
        Setup(cpu, ram, mode, rng);

        int nextEvent = rng.Next(20, 400);
        for (int step = 0; step < StepsPerPage;)
        {
            if (step >= nextEvent)
            {
                nextEvent += rng.Next(20, 400);
                bool nmi = rng.Next(8) == 0;
                if (nmi || ((cpu.Rflags & CpuState.FlagIf) != 0 && cpu.InterruptShadow == 0))
                {
                    if (!Deliver(engine, cpu, new PendingException(nmi ? (byte)2 : (byte)rng.Next(0x20, 0x100), false, 0, 0), false, stats)) break;
                    step++;
                    continue;
                }
            }
            var r = engine.Run(cpu, phys, Math.Max(1, Math.Min(nextEvent, StepsPerPage) - step), out int ran);
            step += Math.Max(ran, 1);
            stats.Steps += ran;
            bool stop = false;
            switch (r.Status)
            {
                case StepStatus.Ok:
                    break;
                case StepStatus.Exception:
                    stop = !Deliver(engine, cpu, r.Exception, true, stats);
                    break;
                case StepStatus.Halt:
                    if ((cpu.Rflags & CpuState.FlagIf) == 0) { stats.Halts++; stop = true; break; }
                    stop = !Deliver(engine, cpu, new PendingException((byte)rng.Next(0x20, 0x100), false, 0, 0), false, stats);
                    break;
                case StepStatus.Unsupported:
                    stats.Unsupported++;
                    stop = !Deliver(engine, cpu, PendingException.Ud, true, stats);
                    break;
                default:
                    stats.Unbacked++;
                    stop = true;
                    break;
            }
            if (stop) break;
        }
        return (engine.JitDivergences, jit.InstructionsRun);
    }

    private sealed class Stats
    {
        public long Steps, Delivered, Halts, TripleFaults, Unsupported, Unbacked, Exhausted, ExternalInterrupts, Nmis;
        public readonly Dictionary<Iced.Intel.Code, int> UnsupportedCodes = [];
        public override string ToString() =>
            $"steps {Steps}, delivered {Delivered} (external {ExternalInterrupts}, NMI {Nmis}), halts {Halts}, triple faults {TripleFaults}, " +
            $"unsupported {Unsupported}, unbacked {Unbacked}, ran out of steps {Exhausted}; most frequent unsupported: " +
            string.Join(", ", UnsupportedCodes.OrderByDescending(kv => kv.Value).Take(12).Select(kv => $"{kv.Key} {kv.Value}"));
    }

    private static void RunPage(GuestMemory mem, FuzzMode mode, int seed, Stats stats)
    {
        var rng = new Random(seed);
        mem.TryGetSpan(0, RamSize, MemProt.Write, out var ram);
        ram.Clear();
        rng.NextBytes(ram.Slice(CodeBase, CodeSize));

        // A fresh VM each page keeps the device state (and so each page) reproducible from its seed alone.
        var vm = new Vm("fuzz", new CpuTopology(1, 1, 1, 1), mem, new ManualClock());
        using var backend = new SoftBackend(vm);
        var vcpu = (SoftVcpu)backend.CreateVcpu(0);
        var phys = new SoftPhysicalMemory(vm, vcpu.Lapic);
        var tsc = new HostTsc();
        var engine = new InstructionEngine(phys)
        {
            Cpuid = new SoftCpuid(vm.Topology, 0),
            Msrs = new SoftMsrs(vcpu.Lapic, tsc, true),
            Tsc = tsc,
            MaxRepIterations = 4096,
        };
        var cpu = new CpuState();
        Setup(cpu, ram, mode, rng);

        int nextEvent = rng.Next(20, 400);
        for (int step = 0; step < StepsPerPage; step++)
        {
            if (step == nextEvent)
            {
                nextEvent += rng.Next(20, 400);
                bool nmi = rng.Next(8) == 0;
                if (nmi || ((cpu.Rflags & CpuState.FlagIf) != 0 && cpu.InterruptShadow == 0))
                {
                    if (nmi) stats.Nmis++; else stats.ExternalInterrupts++;
                    byte vector = nmi ? (byte)2 : (byte)rng.Next(0x20, 0x100);
                    if (!Deliver(engine, cpu, new PendingException(vector, false, 0, 0), false, stats)) return;
                    continue;
                }
            }
            var r = engine.Step(cpu, phys);
            stats.Steps++;
            if ((cpu.Efer & CpuState.EferLma) == 0 || !cpu.Segs[(int)Seg.Cs].Descriptor.Long)
                Assert.True(cpu.Rip <= uint.MaxValue, $"RIP 0x{cpu.Rip:x} outside 64-bit mode after {r.Code} ({mode}, seed {seed})");
            switch (r.Status)
            {
                case StepStatus.Ok:
                    continue;
                case StepStatus.Exception:
                    if (!Deliver(engine, cpu, r.Exception, true, stats)) return;
                    continue;
                case StepStatus.Halt:
                    // An interrupt wakes HLT when IF is set; otherwise the CPU sleeps for good.
                    if ((cpu.Rflags & CpuState.FlagIf) == 0) { stats.Halts++; return; }
                    stats.ExternalInterrupts++;
                    if (!Deliver(engine, cpu, new PendingException((byte)rng.Next(0x20, 0x100), false, 0, 0), false, stats)) return;
                    continue;
                case StepStatus.Unsupported:
                    // The software CPU stops the VM here (naming the instruction); the fuzz run goes on as if the
                    // instruction were undefined, to reach further.
                    stats.Unsupported++;
                    stats.UnsupportedCodes[r.Code] = stats.UnsupportedCodes.GetValueOrDefault(r.Code) + 1;
                    if (!Deliver(engine, cpu, PendingException.Ud, true, stats)) return;
                    continue;
                default:
                    stats.Unbacked++;
                    return;
            }
        }
        stats.Exhausted++;
    }

    // The software CPU's delivery rules: a fault while delivering an exception combines into #DF or a shutdown
    // (SDM Vol. 3 Table 6-5); an interrupt whose delivery faults delivers the fault instead. False when the run ends.
    private static bool Deliver(InstructionEngine engine, CpuState cpu, PendingException e, bool isException, Stats stats)
    {
        int first = isException ? e.Vector : -1;
        for (int attempt = 0; attempt < 4; attempt++)
        {
            var r = engine.Deliver(cpu, e);
            stats.Steps++;
            switch (r.Status)
            {
                case StepStatus.Ok:
                    stats.Delivered++;
                    return true;
                case StepStatus.Exception:
                    break;
                case StepStatus.Unsupported:
                    stats.Unsupported++;
                    return false;
                default:
                    stats.Unbacked++;
                    return false;
            }
            var next = r.Exception;
            if (first < 0)
            {
                e = next;
                first = next.Vector;
                continue;
            }
            var n = ExceptionNesting.Combine(first, next.Vector);
            if (n.Kind == NestingKind.TripleFault) break;
            e = n.Kind == NestingKind.DoubleFault ? new PendingException((byte)ExceptionNesting.DoubleFaultVector, true, 0, 0) : next;
            first = e.Vector;
        }
        stats.TripleFaults++;
        return false;
    }

    private static void Setup(CpuState cpu, Span<byte> ram, FuzzMode mode, Random rng)
    {
        for (int i = 0; i < 16; i++) cpu.Gpr[i] = rng.Next(4) == 0 ? (ulong)rng.NextInt64() : (ulong)rng.Next(RamSize);
        cpu.Rflags = 2 | (rng.Next(2) == 0 ? CpuState.FlagIf : 0);
        if (mode == FuzzMode.Real)
        {
            // IVT: every vector to 1000:random.
            for (int v = 0; v < 256; v++)
            {
                BinaryPrimitives.WriteUInt16LittleEndian(ram[(v * 4)..], (ushort)rng.Next(0x10000));
                BinaryPrimitives.WriteUInt16LittleEndian(ram[(v * 4 + 2)..], CodeBase >> 4);
            }
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(CodeBase >> 4, new SegmentDescriptor(CodeBase, 0xffff, 0x9b));
            cpu.Segs[(int)Seg.Ss] = new SegmentRegister(0x8000, new SegmentDescriptor(0x80000, 0xffff, 0x93));
            ushort ds = (ushort)rng.Next(0x10000);
            foreach (var s in new[] { Seg.Ds, Seg.Es, Seg.Fs, Seg.Gs })
                cpu.Segs[(int)s] = new SegmentRegister(ds, new SegmentDescriptor((ulong)ds << 4, 0xffff, 0x93));
            cpu.Gpr[4] = (ulong)rng.Next(0x10000) & ~1ul;
            cpu.Rip = (ulong)rng.Next(0x10000);
            return;
        }

        bool ia32e = mode is FuzzMode.Long64 or FuzzMode.Compatibility;
        // GDT: ring-0 code (64-bit under IA-32e) and flat data, an alternative code segment (16-bit at CodeBase, or
        // 32-bit compatibility code), a 16-bit data segment, the TSS, and ring-3 code and data.
        var gdt = ram[Gdt..];
        WriteDescriptor(gdt[Code0..], 0, 0xfffff, 0x9b, ia32e ? 0xa : 0xc);
        WriteDescriptor(gdt[Data0..], 0, 0xfffff, 0x93, 0xc);
        if (ia32e) WriteDescriptor(gdt[CodeAlt..], 0, 0xfffff, 0x9b, 0xc);
        else WriteDescriptor(gdt[CodeAlt..], CodeBase, 0xffff, 0x9b, 0x0);
        WriteDescriptor(gdt[Data16..], 0x80000, 0xffff, 0x93, 0x0);
        WriteDescriptor(gdt[TssSel..], Tss, 0x67, 0x8b, 0x0); // busy 32-bit (or 64-bit) TSS, as TR holds it; the upper half stays 0
        WriteDescriptor(gdt[(Code3 & ~7)..], 0, 0xfffff, 0xfb, ia32e ? 0xa : 0xc);
        WriteDescriptor(gdt[(Data3 & ~7)..], 0, 0xfffff, 0xf3, 0xc);
        cpu.Gdtr = new SegmentDescriptor(Gdt, 0x4f, 0);

        // TSS: the ring-0 stack for inner-privilege delivery, IST stacks in IA-32e mode, no I/O bitmap.
        var tss = ram[Tss..];
        if (ia32e)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(tss[4..], Stack0);
            for (int i = 1; i <= 7; i++) BinaryPrimitives.WriteUInt64LittleEndian(tss[(0x24 + 8 * (i - 1))..], (ulong)(IstBase + i * 0x1000));
        }
        else
        {
            BinaryPrimitives.WriteUInt32LittleEndian(tss[4..], Stack0);
            BinaryPrimitives.WriteUInt16LittleEndian(tss[8..], Data0);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(tss[0x66..], 0x68);
        cpu.Tr = new SegmentRegister(TssSel, new SegmentDescriptor(Tss, 0x67, 0x8b));

        // IDT: interrupt or trap gates into the random code, DPL 0 or 3, some through IST stacks in IA-32e mode.
        var idt = ram[Idt..];
        for (int v = 0; v < 256; v++)
        {
            int dpl = rng.Next(4) == 0 ? 3 : 0;
            int type = rng.Next(2) == 0 ? 0xe : 0xf;
            ushort sel = Code0;
            ulong offset = (ulong)(CodeBase + rng.Next(CodeSize));
            if (mode == FuzzMode.Protected16 && rng.Next(2) == 0)
            {
                // A 286 gate into the 16-bit code segment.
                type &= 7;
                sel = CodeAlt;
                offset = (ulong)rng.Next(0x10000);
            }
            byte access = (byte)(0x80 | dpl << 5 | type);
            if (ia32e)
            {
                var g = idt[(v * 16)..];
                BinaryPrimitives.WriteUInt16LittleEndian(g, (ushort)offset);
                BinaryPrimitives.WriteUInt16LittleEndian(g[2..], sel);
                g[4] = (byte)(rng.Next(4) == 0 ? rng.Next(1, 8) : 0);
                g[5] = access;
                BinaryPrimitives.WriteUInt16LittleEndian(g[6..], (ushort)(offset >> 16));
                BinaryPrimitives.WriteUInt32LittleEndian(g[8..], (uint)(offset >> 32));
            }
            else
            {
                var g = idt[(v * 8)..];
                BinaryPrimitives.WriteUInt16LittleEndian(g, (ushort)offset);
                BinaryPrimitives.WriteUInt16LittleEndian(g[2..], sel);
                g[5] = access;
                BinaryPrimitives.WriteUInt16LittleEndian(g[6..], (ushort)(offset >> 16));
            }
        }
        cpu.Idtr = new SegmentDescriptor(Idt, ia32e ? 0xfffu : 0x7ffu, 0);

        var data = new SegmentRegister(Data0, new SegmentDescriptor(0, 0xffffffff, 0xc093));
        if (ia32e)
        {
            // 4-level paging: the first 4 GiB identity-mapped with 2 MiB user pages (the APIC, IOAPIC and HPET included).
            BinaryPrimitives.WriteUInt64LittleEndian(ram[Pml4..], (ulong)(Pml4 + 0x1000) | 7);
            for (int i = 0; i < 4; i++)
            {
                ulong pd = (ulong)(Pml4 + 0x2000 + 0x1000 * i);
                BinaryPrimitives.WriteUInt64LittleEndian(ram[(Pml4 + 0x1000 + 8 * i)..], pd | 7);
                for (int j = 0; j < 512; j++)
                    BinaryPrimitives.WriteUInt64LittleEndian(ram[((int)pd + 8 * j)..], ((ulong)(i * 512 + j) << 21) | 0x87);
            }
            cpu.SetFlatLongMode(Pml4);
            if (mode == FuzzMode.Compatibility)
            {
                cpu.Segs[(int)Seg.Cs] = new SegmentRegister(CodeAlt, new SegmentDescriptor(0, 0xffffffff, 0xc09b));
                cpu.Rip = (ulong)(CodeBase + rng.Next(CodeSize));
            }
            else
            {
                cpu.Rip = (ulong)(CodeBase + rng.Next(CodeSize));
            }
            cpu.Gpr[4] = Stack0 - (ulong)rng.Next(0x1000) * 8;
            return;
        }

        cpu.SetFlatProtectedMode(cr4: CpuState.Cr4Osfxsr);
        foreach (var s in new[] { Seg.Ds, Seg.Es, Seg.Fs, Seg.Gs, Seg.Ss }) cpu.Segs[(int)s] = data;
        if (mode == FuzzMode.Protected16)
        {
            cpu.Segs[(int)Seg.Cs] = new SegmentRegister(CodeAlt, new SegmentDescriptor(CodeBase, 0xffff, 0x9b));
            cpu.Segs[(int)Seg.Ss] = new SegmentRegister(Data16, new SegmentDescriptor(0x80000, 0xffff, 0x93));
            cpu.Gpr[4] = (ulong)rng.Next(0x10000) & ~1ul;
            cpu.Rip = (ulong)rng.Next(0x10000);
        }
        else
        {
            cpu.Gpr[4] = Stack0 - (ulong)rng.Next(0x1000) * 4;
            cpu.Rip = (ulong)(CodeBase + rng.Next(CodeSize));
        }
    }

    // A legacy 8-byte segment descriptor: limit in units of the granularity <paramref name="flags"/> bit 3 selects.
    private static void WriteDescriptor(Span<byte> d, int baseAddress, int limit, byte access, int flags)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(d, (ushort)limit);
        BinaryPrimitives.WriteUInt16LittleEndian(d[2..], (ushort)baseAddress);
        d[4] = (byte)(baseAddress >> 16);
        d[5] = access;
        d[6] = (byte)((limit >> 16) & 0xf | flags << 4);
        d[7] = (byte)(baseAddress >> 24);
    }
}
