// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.X86.Jit;

namespace Hyve.X86;

/// <summary>Operating mode of the processor as decided by CR0.PE, EFLAGS.VM, EFER.LMA and CS.L/D.</summary>
public enum CpuMode
{
    /// <summary>Real-address mode (CR0.PE=0).</summary>
    Real,
    /// <summary>Virtual-8086 mode (protected mode with EFLAGS.VM=1).</summary>
    Virtual8086,
    /// <summary>Legacy protected mode, 16-bit code segment.</summary>
    Protected16,
    /// <summary>Legacy protected mode, 32-bit code segment.</summary>
    Protected32,
    /// <summary>IA-32e compatibility mode, 16-bit code segment.</summary>
    Compatibility16,
    /// <summary>IA-32e compatibility mode, 32-bit code segment.</summary>
    Compatibility32,
    /// <summary>IA-32e 64-bit mode (CS.L=1).</summary>
    Long64,
}

/// <summary>Paging mode as decided by CR0.PG, CR4.PAE, CR4.LA57 and EFER.LME (SDM Vol. 3 4.1.1).</summary>
public enum PagingMode
{
    /// <summary>Paging disabled: linear equals physical.</summary>
    None,
    /// <summary>32-bit paging (two levels, 4 KiB and 4 MiB pages).</summary>
    Bits32,
    /// <summary>PAE paging (PDPTEs, 4 KiB and 2 MiB pages).</summary>
    Pae,
    /// <summary>4-level paging.</summary>
    Level4,
    /// <summary>5-level paging (CR4.LA57).</summary>
    Level5,
}

/// <summary>Index of a segment register in encoding order (ES=0 ... GS=5), as ModRM and Iced order them.</summary>
public enum Seg
{
    /// <summary>ES.</summary>
    Es,
    /// <summary>CS.</summary>
    Cs,
    /// <summary>SS.</summary>
    Ss,
    /// <summary>DS.</summary>
    Ds,
    /// <summary>FS.</summary>
    Fs,
    /// <summary>GS.</summary>
    Gs,
}

/// <summary>A segment register: visible selector plus hidden descriptor cache.</summary>
public struct SegmentRegister
{
    /// <summary>Visible selector.</summary>
    public ushort Selector;
    /// <summary>Hidden descriptor cache (base, limit, access rights).</summary>
    public SegmentDescriptor Descriptor;

    /// <summary>Creates a segment register value.</summary>
    public SegmentRegister(ushort selector, SegmentDescriptor descriptor) { Selector = selector; Descriptor = descriptor; }
}

/// <summary>
/// Architectural state of one x86-64 logical processor. Plain fields so the instruction engine reads
/// them without calls; the FPU/SSE state is kept as the 512-byte FXSAVE image so FXSAVE/FXRSTOR and
/// snapshots copy it unchanged.
/// </summary>
public sealed unsafe class CpuState
{
    /// <summary>RFLAGS.CF.</summary>
    public const ulong FlagCf = 1ul << 0;
    /// <summary>RFLAGS.PF.</summary>
    public const ulong FlagPf = 1ul << 2;
    /// <summary>RFLAGS.AF.</summary>
    public const ulong FlagAf = 1ul << 4;
    /// <summary>RFLAGS.ZF.</summary>
    public const ulong FlagZf = 1ul << 6;
    /// <summary>RFLAGS.SF.</summary>
    public const ulong FlagSf = 1ul << 7;
    /// <summary>RFLAGS.TF.</summary>
    public const ulong FlagTf = 1ul << 8;
    /// <summary>RFLAGS.IF.</summary>
    public const ulong FlagIf = 1ul << 9;
    /// <summary>RFLAGS.DF.</summary>
    public const ulong FlagDf = 1ul << 10;
    /// <summary>RFLAGS.OF.</summary>
    public const ulong FlagOf = 1ul << 11;
    /// <summary>RFLAGS.IOPL mask (bits 13:12).</summary>
    public const ulong FlagIopl = 3ul << 12;
    /// <summary>RFLAGS.VM.</summary>
    public const ulong FlagVm = 1ul << 17;
    /// <summary>RFLAGS.AC.</summary>
    public const ulong FlagAc = 1ul << 18;
    /// <summary>The six arithmetic status flags.</summary>
    public const ulong StatusFlags = FlagCf | FlagPf | FlagAf | FlagZf | FlagSf | FlagOf;

    /// <summary>CR0.PE.</summary>
    public const ulong Cr0Pe = 1ul << 0;
    /// <summary>CR0.EM.</summary>
    public const ulong Cr0Em = 1ul << 2;
    /// <summary>CR0.TS.</summary>
    public const ulong Cr0Ts = 1ul << 3;
    /// <summary>CR0.WP.</summary>
    public const ulong Cr0Wp = 1ul << 16;
    /// <summary>CR0.AM.</summary>
    public const ulong Cr0Am = 1ul << 18;
    /// <summary>CR0.PG.</summary>
    public const ulong Cr0Pg = 1ul << 31;
    /// <summary>CR0.MP.</summary>
    public const ulong Cr0Mp = 1ul << 1;
    /// <summary>CR0.ET.</summary>
    public const ulong Cr0Et = 1ul << 4;
    /// <summary>CR0.NE.</summary>
    public const ulong Cr0Ne = 1ul << 5;
    /// <summary>CR0.NW.</summary>
    public const ulong Cr0Nw = 1ul << 29;
    /// <summary>CR0.CD.</summary>
    public const ulong Cr0Cd = 1ul << 30;
    /// <summary>CR4.VME.</summary>
    public const ulong Cr4Vme = 1ul << 0;
    /// <summary>CR4.PVI.</summary>
    public const ulong Cr4Pvi = 1ul << 1;
    /// <summary>CR4.TSD.</summary>
    public const ulong Cr4Tsd = 1ul << 2;
    /// <summary>CR4.DE.</summary>
    public const ulong Cr4De = 1ul << 3;
    /// <summary>CR4.UMIP.</summary>
    public const ulong Cr4Umip = 1ul << 11;
    /// <summary>CR4.PCIDE.</summary>
    public const ulong Cr4Pcide = 1ul << 17;
    /// <summary>RFLAGS.NT.</summary>
    public const ulong FlagNt = 1ul << 14;
    /// <summary>RFLAGS.RF.</summary>
    public const ulong FlagRf = 1ul << 16;
    /// <summary>RFLAGS.VIF.</summary>
    public const ulong FlagVif = 1ul << 19;
    /// <summary>RFLAGS.VIP.</summary>
    public const ulong FlagVip = 1ul << 20;
    /// <summary>RFLAGS.ID.</summary>
    public const ulong FlagId = 1ul << 21;
    /// <summary>CR4.PSE.</summary>
    public const ulong Cr4Pse = 1ul << 4;
    /// <summary>CR4.PAE.</summary>
    public const ulong Cr4Pae = 1ul << 5;
    /// <summary>CR4.OSFXSR.</summary>
    public const ulong Cr4Osfxsr = 1ul << 9;
    /// <summary>CR4.LA57.</summary>
    public const ulong Cr4La57 = 1ul << 12;
    /// <summary>CR4.SMEP.</summary>
    public const ulong Cr4Smep = 1ul << 20;
    /// <summary>CR4.SMAP.</summary>
    public const ulong Cr4Smap = 1ul << 21;
    /// <summary>CR4.PKE.</summary>
    public const ulong Cr4Pke = 1ul << 22;
    /// <summary>EFER.SCE.</summary>
    public const ulong EferSce = 1ul << 0;
    /// <summary>EFER.LME.</summary>
    public const ulong EferLme = 1ul << 8;
    /// <summary>EFER.LMA.</summary>
    public const ulong EferLma = 1ul << 10;
    /// <summary>EFER.NXE.</summary>
    public const ulong EferNxe = 1ul << 11;

    // The registers translated code touches live in one unmanaged block at fixed offsets (see StateBlock); the
    // properties below are views into it, so interpreter code reads and writes the very same memory.
    private readonly StateBlock* _block = StateBlock.Allocate();

    /// <summary>The unmanaged state block (GPRs, RIP, RFLAGS, the translated code's TLB) for as long as this object lives.</summary>
    public StateBlock* Block => _block;

    /// <summary>General-purpose registers indexed by encoding (RAX=0 ... R15=15), in the state block.</summary>
    public Span<ulong> Gpr => new(_block->Gpr, 16);
    /// <summary>Instruction pointer (in the state block).</summary>
    public ref ulong Rip => ref _block->Rip;
    /// <summary>RFLAGS (bit 1 always reads as 1; in the state block).</summary>
    public ref ulong Rflags => ref _block->Rflags;

    /// <summary>Frees the state block.</summary>
    ~CpuState() => StateBlock.Free(_block);
    /// <summary>Segment registers indexed by <see cref="Seg"/>.</summary>
    public readonly SegmentRegister[] Segs = new SegmentRegister[6];
    /// <summary>GDTR (base and limit; access ignored).</summary>
    public SegmentDescriptor Gdtr;
    /// <summary>IDTR (base and limit; access ignored).</summary>
    public SegmentDescriptor Idtr;
    /// <summary>LDTR.</summary>
    public SegmentRegister Ldtr;
    /// <summary>Task register.</summary>
    public SegmentRegister Tr;
    /// <summary>CR0.</summary>
    public ulong Cr0 = 0x60000010;
    /// <summary>CR2 (page-fault linear address).</summary>
    public ulong Cr2;
    /// <summary>CR3.</summary>
    public ulong Cr3;
    /// <summary>CR4.</summary>
    public ulong Cr4;
    /// <summary>CR8 (task priority).</summary>
    public ulong Cr8;
    /// <summary>IA32_EFER.</summary>
    public ulong Efer;
    /// <summary>Debug registers DR0-DR7 (DR4/DR5 alias DR6/DR7 architecturally; stored here for completeness).</summary>
    public readonly ulong[] Dr = new ulong[8];
    /// <summary>IA32_KERNEL_GS_BASE (swapped by SWAPGS).</summary>
    public ulong KernelGsBase;
    /// <summary>PKRU (protection-key rights for user pages).</summary>
    public uint Pkru;
    /// <summary>IA32_STAR (SYSCALL/SYSRET selectors).</summary>
    public ulong Star;
    /// <summary>IA32_LSTAR (64-bit SYSCALL target).</summary>
    public ulong Lstar;
    /// <summary>IA32_CSTAR (compatibility-mode SYSCALL target).</summary>
    public ulong Cstar;
    /// <summary>IA32_FMASK (RFLAGS bits SYSCALL clears).</summary>
    public ulong Sfmask;
    /// <summary>IA32_SYSENTER_CS.</summary>
    public ulong SysenterCs;
    /// <summary>IA32_SYSENTER_ESP.</summary>
    public ulong SysenterEsp;
    /// <summary>IA32_SYSENTER_EIP.</summary>
    public ulong SysenterEip;
    /// <summary>IA32_TSC_AUX (RDTSCP's ECX).</summary>
    public ulong TscAux;
    /// <summary>IA32_PAT (power-on value 0007040600070406h).</summary>
    public ulong Pat = PatDefault;
    /// <summary>IA32_PAT after reset (SDM Vol. 3 13.12.4).</summary>
    public const ulong PatDefault = 0x0007040600070406;
    /// <summary>
    /// Interrupt shadow left by the instruction just executed (<see cref="ShadowMovSs"/>, <see cref="ShadowSti"/>, as KVM's
    /// <c>interrupt.shadow</c>): maskable interrupts (and, for MOV SS, debug traps) are held off until the next instruction completes.
    /// The engine clears it when it starts the next instruction.
    /// </summary>
    public byte InterruptShadow;
    /// <summary><see cref="InterruptShadow"/> bit: blocking by MOV SS / POP SS.</summary>
    public const byte ShadowMovSs = 1;
    /// <summary><see cref="InterruptShadow"/> bit: blocking by STI.</summary>
    public const byte ShadowSti = 2;
    /// <summary>The FPU/MMX/SSE state in FXSAVE layout (SDM Vol. 1 Table 10-2), 512 bytes.</summary>
    public readonly byte[] Fx = new byte[512];

    /// <summary>Creates a processor in its power-on state (SDM Vol. 3 Table 9-1): real mode at F000:FFF0.</summary>
    public CpuState() => Reset();

    /// <summary>Puts every register in its RESET state.</summary>
    public void Reset()
    {
        Gpr.Clear();
        Array.Clear(Dr);
        Gpr[2] = 0x600; // EDX holds a family/model signature after reset; any non-zero stepping value will do.
        Rip = 0xfff0;
        Rflags = 2;
        Cr0 = 0x60000010; Cr2 = 0; Cr3 = 0; Cr4 = 0; Cr8 = 0; Efer = 0; KernelGsBase = 0; Pkru = 0; InterruptShadow = 0;
        Star = 0; Lstar = 0; Cstar = 0; Sfmask = 0; SysenterCs = 0; SysenterEsp = 0; SysenterEip = 0; TscAux = 0; Pat = PatDefault;
        Dr[6] = 0xffff0ff0; Dr[7] = 0x400;
        for (int i = 0; i < 6; i++) Segs[i] = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x93));
        Segs[(int)Seg.Cs] = new SegmentRegister(0xf000, new SegmentDescriptor(0xffff0000, 0xffff, 0x9b));
        Gdtr = new SegmentDescriptor(0, 0xffff, 0);
        Idtr = new SegmentDescriptor(0, 0xffff, 0);
        Ldtr = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x82));
        Tr = new SegmentRegister(0, new SegmentDescriptor(0, 0xffff, 0x8b));
        Array.Clear(Fx);
        FxInit();
        Mxcsr = 0x1f80;
    }

    /// <summary>The x87 part of FNINIT: FCW=037F, FSW=0, all tags empty, pointers cleared (MXCSR and XMM untouched).</summary>
    public void FxInit()
    {
        Fcw = 0x037f;
        Fsw = 0;
        FtwAbridged = 0; // abridged tag: 0 = empty
        Fx.AsSpan(6, 18).Clear(); // FOP, FIP/FCS, FDP/FDS
    }

    /// <summary>x87 control word (FXSAVE offset 0).</summary>
    public ushort Fcw { get => BinaryPrimitives.ReadUInt16LittleEndian(Fx); set => BinaryPrimitives.WriteUInt16LittleEndian(Fx, value); }
    /// <summary>x87 status word (offset 2).</summary>
    public ushort Fsw { get => BinaryPrimitives.ReadUInt16LittleEndian(Fx.AsSpan(2)); set => BinaryPrimitives.WriteUInt16LittleEndian(Fx.AsSpan(2), value); }
    /// <summary>Abridged x87 tag word (offset 4): bit i set = physical register i valid.</summary>
    public byte FtwAbridged { get => Fx[4]; set => Fx[4] = value; }
    /// <summary>MXCSR (offset 24).</summary>
    public uint Mxcsr { get => BinaryPrimitives.ReadUInt32LittleEndian(Fx.AsSpan(24)); set => BinaryPrimitives.WriteUInt32LittleEndian(Fx.AsSpan(24), value); }
    /// <summary>MXCSR_MASK reported by FXSAVE (offset 28): writable MXCSR bits.</summary>
    public const uint MxcsrMask = 0xffff;
    /// <summary>The 10-byte x87 register ST(i)/MMi slot (16 bytes reserved each, offset 32).</summary>
    public Span<byte> St(int i) => Fx.AsSpan(32 + 16 * (i & 7), 10);
    /// <summary>The 16-byte XMM register (offset 160).</summary>
    public Span<byte> Xmm(int i) => Fx.AsSpan(160 + 16 * (i & 15), 16);

    /// <summary>Current privilege level: 0 in real mode, 3 in virtual-8086 mode, else SS.DPL (as VMX reports it).</summary>
    public int Cpl => (Cr0 & Cr0Pe) == 0 ? 0 : (Rflags & FlagVm) != 0 ? 3 : Segs[(int)Seg.Ss].Descriptor.Dpl;

    /// <summary>The execution mode as the processor derives it from CR0, EFER, RFLAGS and CS.</summary>
    public CpuMode Mode
    {
        get
        {
            if ((Cr0 & Cr0Pe) == 0) return CpuMode.Real;
            var cs = Segs[(int)Seg.Cs].Descriptor;
            if ((Efer & EferLma) != 0)
                return cs.Long ? CpuMode.Long64 : cs.Default32 ? CpuMode.Compatibility32 : CpuMode.Compatibility16;
            if ((Rflags & FlagVm) != 0) return CpuMode.Virtual8086;
            return cs.Default32 ? CpuMode.Protected32 : CpuMode.Protected16;
        }
    }

    /// <summary>Default code size in bits (16, 32 or 64) for the decoder.</summary>
    public int CodeBitness => Mode switch
    {
        CpuMode.Long64 => 64,
        CpuMode.Protected32 or CpuMode.Compatibility32 => 32,
        CpuMode.Real => Segs[(int)Seg.Cs].Descriptor.Default32 ? 32 : 16, // "unreal" 32-bit CS in real mode is honoured as VMX does
        _ => 16,
    };

    /// <summary>The paging mode (SDM Vol. 3 Table 4-1).</summary>
    public PagingMode Paging
    {
        get
        {
            if ((Cr0 & Cr0Pg) == 0 || (Cr0 & Cr0Pe) == 0) return PagingMode.None;
            if ((Cr4 & Cr4Pae) == 0) return PagingMode.Bits32;
            if ((Efer & EferLme) == 0) return PagingMode.Pae;
            return (Cr4 & Cr4La57) != 0 ? PagingMode.Level5 : PagingMode.Level4;
        }
    }

    /// <summary>Reads a register by name; segment and descriptor-table registers give their selector (0 for GDTR/IDTR).</summary>
    public ulong Get(Reg r)
    {
        if (r <= Reg.R15) return Gpr[(int)r];
        return r switch
        {
            Reg.Rip => Rip,
            Reg.Rflags => Rflags,
            Reg.Cr0 => Cr0, Reg.Cr2 => Cr2, Reg.Cr3 => Cr3, Reg.Cr4 => Cr4, Reg.Cr8 => Cr8, Reg.Efer => Efer,
            Reg.Dr0 => Dr[0], Reg.Dr1 => Dr[1], Reg.Dr2 => Dr[2], Reg.Dr3 => Dr[3], Reg.Dr6 => Dr[6], Reg.Dr7 => Dr[7],
            Reg.Es => Segs[0].Selector, Reg.Cs => Segs[1].Selector, Reg.Ss => Segs[2].Selector,
            Reg.Ds => Segs[3].Selector, Reg.Fs => Segs[4].Selector, Reg.Gs => Segs[5].Selector,
            Reg.Ldtr => Ldtr.Selector, Reg.Tr => Tr.Selector,
            _ => 0,
        };
    }

    /// <summary>Writes a register by name; for segment registers only the selector changes.</summary>
    public void Set(Reg r, ulong v)
    {
        if (r <= Reg.R15) { Gpr[(int)r] = v; return; }
        switch (r)
        {
            case Reg.Rip: Rip = v; break;
            case Reg.Rflags: Rflags = v | 2; break;
            case Reg.Cr0: Cr0 = v; break;
            case Reg.Cr2: Cr2 = v; break;
            case Reg.Cr3: Cr3 = v; break;
            case Reg.Cr4: Cr4 = v; break;
            case Reg.Cr8: Cr8 = v; break;
            case Reg.Efer: Efer = v; break;
            case Reg.Dr0: Dr[0] = v; break;
            case Reg.Dr1: Dr[1] = v; break;
            case Reg.Dr2: Dr[2] = v; break;
            case Reg.Dr3: Dr[3] = v; break;
            case Reg.Dr6: Dr[6] = v; break;
            case Reg.Dr7: Dr[7] = v; break;
            case >= Reg.Es and <= Reg.Gs: Segs[r - Reg.Es].Selector = (ushort)v; break;
            case Reg.Ldtr: Ldtr.Selector = (ushort)v; break;
            case Reg.Tr: Tr.Selector = (ushort)v; break;
        }
    }

    /// <summary>Reads the hidden descriptor of a segment or descriptor-table register; false for other registers.</summary>
    public bool TryGetDescriptor(Reg r, out SegmentDescriptor d)
    {
        switch (r)
        {
            case >= Reg.Es and <= Reg.Gs: d = Segs[r - Reg.Es].Descriptor; return true;
            case Reg.Ldtr: d = Ldtr.Descriptor; return true;
            case Reg.Tr: d = Tr.Descriptor; return true;
            case Reg.Gdtr: d = Gdtr; return true;
            case Reg.Idtr: d = Idtr; return true;
            default: d = default; return false;
        }
    }

    /// <summary>Writes the hidden descriptor of a segment or descriptor-table register; false for other registers.</summary>
    public bool TrySetDescriptor(Reg r, SegmentDescriptor d)
    {
        switch (r)
        {
            case >= Reg.Es and <= Reg.Gs: Segs[r - Reg.Es].Descriptor = d; return true;
            case Reg.Ldtr: Ldtr.Descriptor = d; return true;
            case Reg.Tr: Tr.Descriptor = d; return true;
            case Reg.Gdtr: Gdtr = d; return true;
            case Reg.Idtr: Idtr = d; return true;
            default: return false;
        }
    }

    /// <summary>Copies every register of this state into <paramref name="other"/>.</summary>
    public void CopyTo(CpuState other)
    {
        Gpr.CopyTo(other.Gpr); Segs.CopyTo(other.Segs, 0); Dr.CopyTo(other.Dr, 0); Fx.CopyTo(other.Fx, 0);
        other.Rip = Rip; other.Rflags = Rflags; other.Gdtr = Gdtr; other.Idtr = Idtr; other.Ldtr = Ldtr; other.Tr = Tr;
        other.Cr0 = Cr0; other.Cr2 = Cr2; other.Cr3 = Cr3; other.Cr4 = Cr4; other.Cr8 = Cr8; other.Efer = Efer;
        other.KernelGsBase = KernelGsBase; other.Pkru = Pkru; other.InterruptShadow = InterruptShadow;
        other.Star = Star; other.Lstar = Lstar; other.Cstar = Cstar; other.Sfmask = Sfmask; other.SysenterCs = SysenterCs;
        other.SysenterEsp = SysenterEsp; other.SysenterEip = SysenterEip; other.TscAux = TscAux; other.Pat = Pat;
    }

    /// <summary>Sets up flat 64-bit long mode (CS.L=1, paging on with the given CR3) — convenience for tests and direct kernel boot.</summary>
    public void SetFlatLongMode(ulong cr3)
    {
        Cr0 = Cr0Pe | Cr0Pg | Cr0Wp | 0x10 | 0x20; // PE, ET, NE, WP, PG
        Cr4 = Cr4Pae | Cr4Osfxsr;
        Cr3 = cr3;
        Efer = EferLme | EferLma | EferNxe | EferSce;
        Segs[(int)Seg.Cs] = new SegmentRegister(0x08, new SegmentDescriptor(0, 0xffffffff, 0xa09b));
        var data = new SegmentRegister(0x10, new SegmentDescriptor(0, 0xffffffff, 0xc093));
        Segs[(int)Seg.Ss] = data; Segs[(int)Seg.Ds] = data; Segs[(int)Seg.Es] = data; Segs[(int)Seg.Fs] = data; Segs[(int)Seg.Gs] = data;
    }

    /// <summary>Sets up flat 32-bit protected mode (4 GiB segments), paging as given by <paramref name="cr0Pg"/>.</summary>
    public void SetFlatProtectedMode(bool cr0Pg = false, ulong cr3 = 0, ulong cr4 = 0)
    {
        Cr0 = Cr0Pe | 0x10 | 0x20 | (cr0Pg ? Cr0Pg | Cr0Wp : 0);
        Cr3 = cr3; Cr4 = cr4; Efer = 0;
        Segs[(int)Seg.Cs] = new SegmentRegister(0x08, new SegmentDescriptor(0, 0xffffffff, 0xc09b));
        var data = new SegmentRegister(0x10, new SegmentDescriptor(0, 0xffffffff, 0xc093));
        Segs[(int)Seg.Ss] = data; Segs[(int)Seg.Ds] = data; Segs[(int)Seg.Es] = data; Segs[(int)Seg.Fs] = data; Segs[(int)Seg.Gs] = data;
    }
}
