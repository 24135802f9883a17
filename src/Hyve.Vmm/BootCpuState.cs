// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.X86;

namespace Hyve.Vmm;

/// <summary>A segment register's selector and hidden part, as a loader sets it.</summary>
/// <param name="Selector">The visible selector.</param>
/// <param name="Descriptor">The hidden part (base, limit, access rights in VMX layout).</param>
public readonly record struct BootSegment(ushort Selector, SegmentDescriptor Descriptor);

/// <summary>
/// vCPU 0's initial register state for a direct kernel boot (libvmmapi's vm_setup_freebsd_registers and
/// vm_setup_freebsd_registers_i386): general-purpose registers, RIP, RFLAGS, control registers, EFER, every
/// segment register with its hidden part, GDTR and IDTR. <see cref="Flat32"/> and <see cref="Long64"/> also write
/// the GDT, TSS and (for long mode) identity page tables the state refers to; <see cref="Apply"/> loads it into a vCPU.
/// </summary>
public sealed class BootCpuState
{
    /// <summary>Code selector: Linux's __BOOT_CS, so one GDT serves every boot protocol.</summary>
    public const ushort CodeSelector = 0x10;
    /// <summary>Data selector: Linux's __BOOT_DS.</summary>
    public const ushort DataSelector = 0x18;
    /// <summary>TSS selector (a 16-byte system descriptor, valid in both modes).</summary>
    public const ushort TssSelector = 0x20;
    /// <summary>Bytes of GDT written (null, null, code, data, 16-byte TSS descriptor).</summary>
    public const int GdtLength = 0x30;
    /// <summary>Offset of the TSS from the GDT base.</summary>
    public const int TssOffset = 0x40;
    /// <summary>Bytes of a 32-bit TSS (the limit is this minus one).</summary>
    public const int TssLength = 0x68;
    /// <summary>Guest bytes <see cref="Flat32"/> and <see cref="Long64"/> use from the GDT base (GDT then TSS).</summary>
    public const int GdtAreaLength = TssOffset + TssLength;
    /// <summary>Guest bytes <see cref="Long64"/> uses from the PML4 for a 4 GiB identity map (PML4, PDPT, four PDs).</summary>
    public const int PageTableLength = 6 * 4096;

    /// <summary>Access rights (VMX layout) of a flat 32-bit code segment: execute/read, accessed, present, D=1, G=1.</summary>
    public const uint Code32Access = 0xC09B;
    /// <summary>Access rights of a 64-bit code segment: execute/read, accessed, present, L=1, D=0, G=1.</summary>
    public const uint Code64Access = 0xA09B;
    /// <summary>Access rights of a flat data segment: read/write, accessed, present, B=1, G=1.</summary>
    public const uint DataAccess = 0xC093;
    /// <summary>Access rights of a busy 32/64-bit TSS (type 11, present).</summary>
    public const uint TssAccess = 0x008B;

    /// <summary>CR0.PE.</summary>
    public const ulong Cr0Pe = 1ul << 0;
    /// <summary>CR0.ET (hard-wired to 1 on every processor since the 486).</summary>
    public const ulong Cr0Et = 1ul << 4;
    /// <summary>CR0.PG.</summary>
    public const ulong Cr0Pg = 1ul << 31;
    /// <summary>CR4.PAE.</summary>
    public const ulong Cr4Pae = 1ul << 5;
    /// <summary>EFER.LME.</summary>
    public const ulong EferLme = 1ul << 8;
    /// <summary>EFER.LMA.</summary>
    public const ulong EferLma = 1ul << 10;

    private readonly ulong[] _gprs = new ulong[16];

    /// <summary>A general-purpose register (<see cref="Reg.Rax"/> to <see cref="Reg.R15"/>).</summary>
    public ulong this[Reg gpr]
    {
        get => _gprs[GprIndex(gpr)];
        set => _gprs[GprIndex(gpr)] = value;
    }

    /// <summary>Instruction pointer (the entry point).</summary>
    public ulong Rip { get; set; }
    /// <summary>RFLAGS: reserved bit 1 only (interrupts off).</summary>
    public ulong Rflags { get; set; } = 0x2;
    /// <summary>CR0.</summary>
    public ulong Cr0 { get; set; }
    /// <summary>CR3.</summary>
    public ulong Cr3 { get; set; }
    /// <summary>CR4.</summary>
    public ulong Cr4 { get; set; }
    /// <summary>IA32_EFER.</summary>
    public ulong Efer { get; set; }
    /// <summary>CS.</summary>
    public BootSegment Cs { get; set; }
    /// <summary>DS.</summary>
    public BootSegment Ds { get; set; }
    /// <summary>ES.</summary>
    public BootSegment Es { get; set; }
    /// <summary>FS.</summary>
    public BootSegment Fs { get; set; }
    /// <summary>GS.</summary>
    public BootSegment Gs { get; set; }
    /// <summary>SS.</summary>
    public BootSegment Ss { get; set; }
    /// <summary>TR.</summary>
    public BootSegment Tr { get; set; }
    /// <summary>LDTR (unusable: no LDT).</summary>
    public BootSegment Ldtr { get; set; } = new(0, new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable));
    /// <summary>GDTR (base and limit; access unused).</summary>
    public SegmentDescriptor Gdtr { get; set; }
    /// <summary>IDTR (base and limit; access unused). Empty by default: interrupts are off and an exception shuts down.</summary>
    public SegmentDescriptor Idtr { get; set; }

    /// <summary>
    /// 32-bit flat protected mode with paging off: writes a GDT at <paramref name="gdtBase"/> (null, null,
    /// flat code 0x10, flat data 0x18, TSS 0x20) and a zeroed TSS after it, loads CS with the code segment,
    /// DS/ES/FS/GS/SS with the data segment, TR with the TSS, sets CR0.PE|ET and RIP = <paramref name="entry"/>.
    /// With a <paramref name="stackTop"/>, ESP points at a zero fake return address just below it.
    /// </summary>
    public static BootCpuState Flat32(GuestMemory memory, ulong entry, ulong gdtBase, ulong stackTop = 0)
    {
        var s = new BootCpuState();
        s.SetupGdt(memory, gdtBase, Code32Access);
        s.Rip = entry;
        s.Cr0 = Cr0Pe | Cr0Et;
        if (stackTop != 0) s[Reg.Rsp] = PushFakeReturn(memory, stackTop, 4);
        return s;
    }

    /// <summary>
    /// 64-bit long mode: writes identity page tables mapping the first <paramref name="identityBytes"/> (4 GiB by
    /// default, 2 MiB pages) at <paramref name="pml4"/> (<see cref="PageTableLength"/> bytes for 4 GiB) and the GDT as
    /// <see cref="Flat32"/> does but with a 64-bit code segment (L=1); sets CR0.PE|PG|ET, CR3, CR4.PAE, EFER.LME|LMA.
    /// </summary>
    public static BootCpuState Long64(GuestMemory memory, ulong entry, ulong pml4, ulong gdtBase, ulong stackTop = 0,
        ulong identityBytes = 4ul << 30)
    {
        var s = new BootCpuState();
        WriteIdentityPageTables(memory, pml4, identityBytes);
        s.SetupGdt(memory, gdtBase, Code64Access);
        s.Rip = entry;
        s.Cr0 = Cr0Pe | Cr0Et | Cr0Pg;
        s.Cr3 = pml4;
        s.Cr4 = Cr4Pae;
        s.Efer = EferLme | EferLma;
        if (stackTop != 0) s[Reg.Rsp] = PushFakeReturn(memory, stackTop, 8);
        return s;
    }

    /// <summary>
    /// Writes 4-level page tables identity-mapping [0, <paramref name="bytes"/>) with 2 MiB pages: the PML4 at
    /// <paramref name="pml4"/>, one PDPT after it, then one page directory per GiB (at most 512 GiB). Returns the bytes used.
    /// </summary>
    public static int WriteIdentityPageTables(GuestMemory memory, ulong pml4, ulong bytes)
    {
        if ((pml4 & 0xfff) != 0) throw new ArgumentException("page tables must be page aligned");
        int gib = (int)Math.Clamp((bytes + (1ul << 30) - 1) >> 30, 1, 512);
        int length = (2 + gib) * 4096;
        var t = Span(memory, pml4, length, "page tables");
        t.Clear();
        const ulong PresentWritable = 0x3, LargePage = 0x80;
        ulong pdpt = pml4 + 0x1000;
        BinaryPrimitives.WriteUInt64LittleEndian(t, pdpt | PresentWritable);
        for (int g = 0; g < gib; g++)
        {
            ulong pd = pml4 + 0x2000 + (ulong)g * 0x1000;
            BinaryPrimitives.WriteUInt64LittleEndian(t[(0x1000 + g * 8)..], pd | PresentWritable);
            for (int e = 0; e < 512; e++)
            {
                ulong phys = ((ulong)g << 30) | ((ulong)e << 21);
                BinaryPrimitives.WriteUInt64LittleEndian(t[(0x2000 + g * 0x1000 + e * 8)..], phys | PresentWritable | LargePage);
            }
        }
        return length;
    }

    /// <summary>
    /// Loads the state into <paramref name="vcpu"/> (on its thread). Order matters to KVM, which checks every
    /// KVM_SET_SREGS for consistency: descriptor tables, then CR0/CR3/CR4/EFER in one step (long mode needs
    /// CR0.PG with EFER.LME|LMA together), then the segments (CS.L is only legal once EFER.LMA is set),
    /// then the general-purpose registers, RFLAGS and RIP.
    /// </summary>
    public void Apply(IVcpuBackend vcpu)
    {
        Step(vcpu, "GDTR", v => v.SetDescriptor(Reg.Gdtr, Gdtr));
        Step(vcpu, "IDTR", v => v.SetDescriptor(Reg.Idtr, Idtr));
        Step(vcpu, "CR0/CR3/CR4/EFER", v => v.SetControlRegisters(Cr0, Cr3, Cr4, Efer));
        LoadSegment(vcpu, Reg.Cs, Cs);
        LoadSegment(vcpu, Reg.Ds, Ds);
        LoadSegment(vcpu, Reg.Es, Es);
        LoadSegment(vcpu, Reg.Fs, Fs);
        LoadSegment(vcpu, Reg.Gs, Gs);
        LoadSegment(vcpu, Reg.Ss, Ss);
        LoadSegment(vcpu, Reg.Tr, Tr);
        LoadSegment(vcpu, Reg.Ldtr, Ldtr);
        for (int i = 0; i < 16; i++) vcpu.SetRegister((Reg)i, _gprs[i]);
        vcpu.SetRegister(Reg.Rflags, Rflags);
        vcpu.SetRegister(Reg.Rip, Rip);
    }

    // Names the register whose load the CPU engine refused, so a failed boot says where it stopped.
    private static void Step(IVcpuBackend vcpu, string what, Action<IVcpuBackend> set)
    {
        try { set(vcpu); }
        catch (IOException e) { throw new IOException($"loading the boot state's {what}: {e.Message}", e); }
    }

    private static void LoadSegment(IVcpuBackend vcpu, Reg reg, BootSegment seg) => Step(vcpu, reg.ToString().ToUpperInvariant(), v =>
    {
        v.SetDescriptor(reg, seg.Descriptor);
        v.SetRegister(reg, seg.Selector);
    });

    private void SetupGdt(GuestMemory memory, ulong gdtBase, uint codeAccess)
    {
        if ((gdtBase & 7) != 0 || gdtBase + GdtAreaLength > 1ul << 32) throw new ArgumentException("the GDT must be 8-byte aligned below 4 GiB");
        var g = Span(memory, gdtBase, GdtAreaLength, "GDT");
        g.Clear();
        ulong tss = gdtBase + TssOffset;
        WriteDescriptor(g[CodeSelector..], 0, 0xfffff, codeAccess);
        WriteDescriptor(g[DataSelector..], 0, 0xfffff, DataAccess);
        WriteDescriptor(g[TssSelector..], tss, TssLength - 1, TssAccess);
        // The upper half of the 16-byte TSS descriptor (base 63:32) stays zero: the TSS is below 4 GiB.
        var code = new SegmentDescriptor(0, 0xffff_ffff, codeAccess);
        var data = new SegmentDescriptor(0, 0xffff_ffff, DataAccess);
        Cs = new BootSegment(CodeSelector, code);
        Ds = Es = Fs = Gs = Ss = new BootSegment(DataSelector, data);
        Tr = new BootSegment(TssSelector, new SegmentDescriptor(tss, TssLength - 1, TssAccess));
        Gdtr = new SegmentDescriptor(gdtBase, GdtLength - 1, 0);
        Idtr = new SegmentDescriptor(0, 0, 0);
    }

    // A GDT entry: limit 15:0, base 23:0, access byte (type, S, DPL, P), limit 19:16 with AVL/L/D/G, base 31:24.
    private static void WriteDescriptor(Span<byte> d, ulong baseAddress, uint rawLimit, uint access)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(d, (ushort)rawLimit);
        BinaryPrimitives.WriteUInt16LittleEndian(d[2..], (ushort)baseAddress);
        d[4] = (byte)(baseAddress >> 16);
        d[5] = (byte)access;
        d[6] = (byte)(((rawLimit >> 16) & 0xf) | ((access >> 8) & 0xf0));
        d[7] = (byte)(baseAddress >> 24);
    }

    private static ulong PushFakeReturn(GuestMemory memory, ulong stackTop, int width)
    {
        ulong sp = (stackTop & ~0xful) - (ulong)width;
        Span(memory, sp, width, "stack").Clear();
        return sp;
    }

    private static Span<byte> Span(GuestMemory memory, ulong gpa, int length, string what)
    {
        if (!memory.TryGetSpan(gpa, length, MemProt.Write, out var span))
            throw new ArgumentException($"{what} at 0x{gpa:x} ({length} bytes) is not in guest RAM");
        return span;
    }

    private static int GprIndex(Reg r) => r is >= Reg.Rax and <= Reg.R15 ? (int)r : throw new ArgumentException($"{r} is not a general-purpose register");
}
