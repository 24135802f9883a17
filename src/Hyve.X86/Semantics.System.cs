// SPDX-License-Identifier: BSD-2-Clause
using Iced.Intel;

namespace Hyve.X86;

public sealed unsafe partial class InstructionEngine
{
    // System instructions (SDM Vol. 2 and Vol. 3 2.5-2.8): descriptor-table registers, control and debug registers,
    // interrupt flag, CPUID/MSR/TSC through pluggable models. Privileged ones check CPL 0 first (#GP(0)); those
    // that do not exist in real or virtual-8086 mode give #UD there.

    /// <summary>What CPUID reports (default: <see cref="MinimalCpuidModel.Shared"/>).</summary>
    public ICpuidModel Cpuid { get; set; } = MinimalCpuidModel.Shared;

    /// <summary>The VMM's MSRs, asked before <see cref="ArchitecturalMsrs"/>; an MSR neither knows is #GP(0).</summary>
    public IMsrHandler? Msrs { get; set; }

    /// <summary>The local APIC TPR that CR8 reads and writes (null: CR8 is a plain register).</summary>
    public ITaskPriorityRegister? TaskPriority { get; set; }

    /// <summary>The time-stamp counter (default: <see cref="HostTsc.Shared"/>).</summary>
    public ITscSource Tsc { get; set; } = HostTsc.Shared;

    /// <summary>CR4 bits a guest may set; writing any other bit is #GP(0). Follows <see cref="Model"/> (setting the model
    /// sets it).</summary>
    public ulong Cr4Writable { get; set; } = CpuModel.Default.Cr4Writable;

    private bool IsRealOrV86 => _cpu.Mode is CpuMode.Real or CpuMode.Virtual8086;

    /// <summary>#GP(0) unless CPL is 0 (virtual-8086 mode runs at CPL 3, so it faults too).</summary>
    private bool Cpl0() => _cpu.Cpl == 0 || RaiseFalse(PendingException.Gp0);

    /// <summary>SGDT/SIDT/SLDT/STR/SMSW at CPL &gt; 0 with CR4.UMIP: #GP(0).</summary>
    private bool UmipOk() => (_cpu.Cr4 & CpuState.Cr4Umip) == 0 || _cpu.Cpl == 0 || RaiseFalse(PendingException.Gp0);

    private int IopL => (int)((_cpu.Rflags >> 12) & 3);

    // ---- descriptor-table registers ----------------------------------------------------------------------

    /// <summary>LGDT/LIDT m16&amp;32 (24-bit base with a 16-bit operand) or m16&amp;64 in 64-bit mode.</summary>
    private static Exec LoadDescriptorTable(InstructionEngine e, ref Instruction i)
    {
        if (!e.Cpl0()) return Exec.Fault;
        ulong ea = e.EffectiveAddress(ref i, out int asz);
        var seg = SegOf(i.MemorySegment);
        int bsize = e._bitness == 64 ? 8 : 4;
        if (!e.Resolve(seg, ea, 2, PageAccess.Read, out var l0) || !e.ReadLoc(l0, out ulong limit)) return Exec.Fault;
        if (!e.Resolve(seg, (ea + 2) & Mask(asz), bsize, PageAccess.Read, out var l1) || !e.ReadLoc(l1, out ulong b)) return Exec.Fault;
        if (i.Code is Code.Lgdt_m1632_16 or Code.Lidt_m1632_16) b &= 0xffffff;
        var d = new SegmentDescriptor(b, (uint)limit, 0);
        if (i.Mnemonic == Mnemonic.Lgdt) e._cpu.Gdtr = d; else e._cpu.Idtr = d;
        return Exec.Next;
    }

    /// <summary>SGDT/SIDT: limit then base (the base's high byte stored as 0 with a 16-bit operand).</summary>
    private static Exec StoreDescriptorTable(InstructionEngine e, ref Instruction i)
    {
        if (!e.UmipOk()) return Exec.Fault;
        var d = i.Mnemonic == Mnemonic.Sgdt ? e._cpu.Gdtr : e._cpu.Idtr;
        ulong ea = e.EffectiveAddress(ref i, out int asz);
        var seg = SegOf(i.MemorySegment);
        int bsize = e._bitness == 64 ? 8 : 4;
        ulong b = i.Code is Code.Sgdt_m1632_16 or Code.Sidt_m1632_16 ? d.Base & 0xffffff : d.Base & Mask(bsize);
        if (!e.Resolve(seg, ea, 2, PageAccess.Write, out var l0) || !e.Resolve(seg, (ea + 2) & Mask(asz), bsize, PageAccess.Write, out var l1)) return Exec.Fault;
        return e.WriteLoc(l0, d.Limit & 0xffff) && e.WriteLoc(l1, b) ? Exec.Next : Exec.Fault;
    }

    /// <summary>Reads a system descriptor from the GDT: 8 bytes, or 16 in IA-32e mode (upper type field must be 0).</summary>
    private bool ReadSystemDescriptor(ushort sel, out SegmentDescriptor d, out ulong raw, out ulong address)
    {
        d = default; raw = 0; address = 0;
        var c = _cpu;
        bool wide = (c.Efer & CpuState.EferLma) != 0;
        ulong off = (ulong)(sel & 0xfff8);
        if ((sel & 4) != 0 || off + (wide ? 15ul : 7ul) > c.Gdtr.Limit) return RaiseFalse(GpSel(sel));
        if (!ReadDescriptor(sel, out raw, out address)) return false;
        d = Segmentation.FromRaw(raw);
        if (wide)
        {
            var r = _mem.Read(c, address + 8, 8, PageAccess.Implicit, out ulong hi);
            if (!r.IsOk) { _fault = r; return false; }
            if (((hi >> 40) & 0x1f) != 0) return RaiseFalse(GpSel(sel));
            d = d with { Base = d.Base | (hi << 32) };
            if (!Segmentation.IsCanonical(c, d.Base)) return RaiseFalse(GpSel(sel));
        }
        return true;
    }

    /// <summary>LLDT r/m16: a null selector leaves LDTR unusable; otherwise an LDT descriptor (type 2) from the GDT.</summary>
    private static Exec Lldt(InstructionEngine e, ref Instruction i)
    {
        if (e.IsRealOrV86) return e.Raise(PendingException.Ud);
        if (!e.Cpl0() || !e.ReadOp(ref i, 0, 2, out ulong v)) return Exec.Fault;
        ushort sel = (ushort)v;
        var c = e._cpu;
        if ((sel & 0xfffc) == 0) { c.Ldtr = new SegmentRegister(sel, new SegmentDescriptor(0, 0, SegmentDescriptor.Unusable)); return Exec.Next; }
        if (!e.ReadSystemDescriptor(sel, out var d, out _, out _)) return Exec.Fault;
        if ((d.Access & 0x1f) != 2) return e.Raise(GpSel(sel));
        if (!d.Present) return e.Raise(NpSel(sel));
        c.Ldtr = new SegmentRegister(sel, d);
        return Exec.Next;
    }

    /// <summary>LTR r/m16: an available TSS from the GDT, marked busy in memory and in TR.</summary>
    private static Exec Ltr(InstructionEngine e, ref Instruction i)
    {
        if (e.IsRealOrV86) return e.Raise(PendingException.Ud);
        if (!e.Cpl0() || !e.ReadOp(ref i, 0, 2, out ulong v)) return Exec.Fault;
        ushort sel = (ushort)v;
        var c = e._cpu;
        if ((sel & 0xfffc) == 0) return e.Raise(PendingException.Gp0);
        if (!e.ReadSystemDescriptor(sel, out var d, out ulong raw, out ulong addr)) return Exec.Fault;
        uint type = d.Access & 0x1f;
        // Available 32/64-bit TSS (9), or available 16-bit TSS (1) outside IA-32e mode.
        if (!(type == 9 || (type == 1 && (c.Efer & CpuState.EferLma) == 0))) return e.Raise(GpSel(sel));
        if (!d.Present) return e.Raise(NpSel(sel));
        byte acc = (byte)((raw >> 40) | 2);
        var r = e._mem.TranslateSpan(c, addr + 5, 1, PageAccess.Write | PageAccess.Implicit, out ulong g0, out int l0, out ulong g1);
        if (r.IsOk) r = e._mem.WriteTranslated(g0, l0, g1, 1, acc);
        if (!r.IsOk) return e.Fail(r);
        c.Tr = new SegmentRegister(sel, d with { Access = d.Access | 2 });
        return Exec.Next;
    }

    /// <summary>SLDT/STR/SMSW: a register destination gets the value zero-extended (SMSW r32/r64: CR0), memory 16 bits.</summary>
    private static Exec StoreSystemRegister(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var m = i.Mnemonic;
        if (m != Mnemonic.Smsw && e.IsRealOrV86) return e.Raise(PendingException.Ud);
        if (!e.UmipOk()) return Exec.Fault;
        ulong v = m switch { Mnemonic.Sldt => c.Ldtr.Selector, Mnemonic.Str => c.Tr.Selector, _ => c.Cr0 };
        if (i.Op0Kind == OpKind.Register) { SetGpr(c, i.Op0Register, v); return Exec.Next; }
        return e.WriteOp(ref i, 0, 2, v & 0xffff) ? Exec.Next : Exec.Fault;
    }

    /// <summary>LMSW: loads CR0.PE/MP/EM/TS; PE can be set but not cleared.</summary>
    private static Exec Lmsw(InstructionEngine e, ref Instruction i)
    {
        if (!e.Cpl0() || !e.ReadOp(ref i, 0, 2, out ulong v)) return Exec.Fault;
        var c = e._cpu;
        c.Cr0 = (c.Cr0 & ~0xeul) | (v & 0xf) | (c.Cr0 & CpuState.Cr0Pe);
        return Exec.Next;
    }

    private static Exec Clts(InstructionEngine e, ref Instruction i)
    {
        if (!e.Cpl0()) return Exec.Fault;
        e._cpu.Cr0 &= ~CpuState.Cr0Ts;
        return Exec.Next;
    }

    // ---- control registers ------------------------------------------------------------------------------

    private static Exec MovCr(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        bool toCr = i.Op0Register.IsCR();
        var cr = toCr ? i.Op0Register : i.Op1Register;
        int n = cr - Register.CR0;
        if (n is not (0 or 2 or 3 or 4 or 8)) return e.Raise(PendingException.Ud);
        if (!e.Cpl0()) return Exec.Fault;
        if (!toCr)
        {
            ulong v = n switch { 0 => c.Cr0, 2 => c.Cr2, 3 => c.Cr3, 4 => c.Cr4, _ => e.TaskPriority is { } tpr ? tpr.TaskPriority >> 4 & 0xf : c.Cr8 & 0xf };
            SetGpr(c, i.Op0Register, v);
            return Exec.Next;
        }
        ulong val = GetGpr(c, i.Op1Register);
        return e.WriteCr(n, val) ? Exec.Next : Exec.Fault;
    }

    /// <summary>Writes a control register with the SDM's MOV CR checks; activates or deactivates IA-32e mode on CR0.PG.</summary>
    private bool WriteCr(int n, ulong v)
    {
        var c = _cpu;
        bool longMode = (c.Efer & CpuState.EferLma) != 0;
        switch (n)
        {
            case 0:
            {
                if ((v >> 32) != 0) return RaiseFalse(PendingException.Gp0);
                const ulong defined = 0xf | CpuState.Cr0Ne | CpuState.Cr0Wp | CpuState.Cr0Am | CpuState.Cr0Nw | CpuState.Cr0Cd | CpuState.Cr0Pg;
                v = (v & defined) | CpuState.Cr0Et; // reserved bits 31:0 are ignored; ET is hardwired to 1
                if ((v & CpuState.Cr0Nw) != 0 && (v & CpuState.Cr0Cd) == 0) return RaiseFalse(PendingException.Gp0);
                if ((v & CpuState.Cr0Pg) != 0 && (v & CpuState.Cr0Pe) == 0) return RaiseFalse(PendingException.Gp0);
                bool pgOn = (c.Cr0 & CpuState.Cr0Pg) == 0 && (v & CpuState.Cr0Pg) != 0;
                bool pgOff = (c.Cr0 & CpuState.Cr0Pg) != 0 && (v & CpuState.Cr0Pg) == 0;
                if (pgOn && (c.Efer & CpuState.EferLme) != 0)
                {
                    // Activating IA-32e mode needs PAE and a CS without L (SDM Vol. 3 10.8.5).
                    if ((c.Cr4 & CpuState.Cr4Pae) == 0 || c.Segs[(int)Seg.Cs].Descriptor.Long) return RaiseFalse(PendingException.Gp0);
                }
                if (pgOff && c.Mode == CpuMode.Long64) return RaiseFalse(PendingException.Gp0);
                if ((v & CpuState.Cr0Pg) == 0 && (c.Cr4 & CpuState.Cr4Pcide) != 0) return RaiseFalse(PendingException.Gp0);
                if (pgOn && (c.Efer & CpuState.EferLme) == 0 && (c.Cr4 & CpuState.Cr4Pae) != 0 && !PdptesValid(c.Cr3)) return false;
                c.Cr0 = v;
                if (pgOn && (c.Efer & CpuState.EferLme) != 0) c.Efer |= CpuState.EferLma;
                if (pgOff) c.Efer &= ~CpuState.EferLma;
                return true;
            }
            case 2:
                c.Cr2 = longMode ? v : (uint)v;
                return true;
            case 3:
            {
                if (!longMode)
                {
                    if (c.Paging == PagingMode.Pae && !PdptesValid((uint)v)) return false;
                    c.Cr3 = (uint)v;
                    _mem.Walker.Tlb?.MovToCr3(c, false);
                    return true;
                }
                bool noFlush = (c.Cr4 & CpuState.Cr4Pcide) != 0 && (v >> 63) != 0;
                if ((c.Cr4 & CpuState.Cr4Pcide) != 0) v &= ~(1ul << 63); // bit 63 = "do not flush", not stored
                int mp = _mem.Walker.MaxPhysAddr;
                if (mp < 64 && (v >> mp) != 0) return RaiseFalse(PendingException.Gp0);
                c.Cr3 = v;
                _mem.Walker.Tlb?.MovToCr3(c, noFlush);
                return true;
            }
            case 4:
            {
                if ((v & ~Cr4Writable) != 0) return RaiseFalse(PendingException.Gp0);
                if (longMode && (v & CpuState.Cr4Pae) == 0) return RaiseFalse(PendingException.Gp0);
                if (longMode && ((v ^ c.Cr4) & CpuState.Cr4La57) != 0) return RaiseFalse(PendingException.Gp0);
                if ((v & CpuState.Cr4Pcide) != 0 && (c.Cr4 & CpuState.Cr4Pcide) == 0 && (!longMode || (c.Cr3 & 0xfff) != 0))
                    return RaiseFalse(PendingException.Gp0);
                // In (or into) PAE paging, changing PAE, PGE, PSE or SMEP reloads the PDPTEs.
                const ulong reload = CpuState.Cr4Pae | 1ul << 7 | CpuState.Cr4Pse | CpuState.Cr4Smep;
                if (!longMode && (c.Cr0 & CpuState.Cr0Pg) != 0 && (v & CpuState.Cr4Pae) != 0 && ((v ^ c.Cr4) & reload) != 0 && !PdptesValid(c.Cr3))
                    return false;
                c.Cr4 = v;
                return true;
            }
            default: // CR8: the TPR, bits 63:4 reserved
                if ((v >> 4) != 0) return RaiseFalse(PendingException.Gp0);
                c.Cr8 = v;
                // A write to CR8 sets TPR[7:4] and clears TPR[3:0]; the APIC re-evaluates the PPR at once.
                if (TaskPriority is { } t) t.TaskPriority = (uint)v << 4;
                return true;
        }
    }

    /// <summary>
    /// The PDPTE load of PAE paging (SDM Vol. 3 4.4.1): a present PDPTE with reserved bits (2:1, 8:5, above MAXPHYADDR)
    /// makes the MOV to CR0/CR3/CR4 #GP(0).
    /// </summary>
    private bool PdptesValid(ulong cr3)
    {
        int mp = _mem.Walker.MaxPhysAddr;
        ulong reserved = 0x1e6ul | ~((1ul << mp) - 1); // includes bit 63: PDPTEs have no XD bit
        ulong table = cr3 & 0xffffffe0;
        Span<byte> b = stackalloc byte[32];
        var r = _mem.ReadPhysical(table, b);
        if (!r.IsOk) { _fault = r; return false; }
        for (int k = 0; k < 4; k++)
        {
            ulong e = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(b[(8 * k)..]);
            if ((e & 1) != 0 && (e & reserved) != 0) return RaiseFalse(PendingException.Gp0);
        }
        return true;
    }

    // ---- debug registers --------------------------------------------------------------------------------

    private static Exec MovDr(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        bool toDr = i.Op0Register.IsDR();
        int n = (toDr ? i.Op0Register : i.Op1Register) - Register.DR0;
        if (n > 7) return e.Raise(PendingException.Ud);
        if (n is 4 or 5)
        {
            if ((c.Cr4 & CpuState.Cr4De) != 0) return e.Raise(PendingException.Ud);
            n += 2; // DR4/DR5 alias DR6/DR7 without CR4.DE
        }
        if (!e.Cpl0()) return Exec.Fault;
        if ((c.Dr[7] & (1ul << 13)) != 0)
        {
            // DR7.GD: the access is a debug fault with DR6.BD set and GD cleared for the handler.
            c.Dr[6] |= 1ul << 13;
            c.Dr[7] &= ~(1ul << 13);
            return e.Raise(new PendingException(Vector.DB, false, 0, 0));
        }
        bool wide = e._bitness == 64;
        if (!toDr)
        {
            SetGpr(c, i.Op0Register, wide ? c.Dr[n] : (uint)c.Dr[n]);
            return Exec.Next;
        }
        ulong v = GetGpr(c, i.Op1Register);
        switch (n)
        {
            case 6:
                if ((v >> 32) != 0) return e.Raise(PendingException.Gp0);
                c.Dr[6] = (v & 0x1e80f) | 0xfffe07f0; // B0-3, BLD, BD, BS, BT, RTM writable; the rest fixed
                break;
            case 7:
                if ((v >> 32) != 0) return e.Raise(PendingException.Gp0);
                c.Dr[7] = (v & 0xffff2bff) | 0x400;
                break;
            default:
                c.Dr[n] = wide ? v : (uint)v;
                break;
        }
        return Exec.Next;
    }

    // ---- interrupt flag and RFLAGS ----------------------------------------------------------------------

    /// <summary>CLI/STI: IF when IOPL allows, VIF under VME/PVI, #GP(0) otherwise; STI that sets IF opens a one-instruction shadow.</summary>
    private static Exec CliSti(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        bool sti = i.Mnemonic == Mnemonic.Sti;
        var mode = c.Mode;
        bool useIf, useVif = false;
        if (mode == CpuMode.Real) useIf = true;
        else if (mode == CpuMode.Virtual8086)
        {
            useIf = e.IopL == 3;
            useVif = !useIf && (c.Cr4 & CpuState.Cr4Vme) != 0;
        }
        else
        {
            useIf = e.IopL >= c.Cpl;
            useVif = !useIf && c.Cpl == 3 && (c.Cr4 & CpuState.Cr4Pvi) != 0;
        }
        if (useIf)
        {
            if (sti)
            {
                if ((c.Rflags & CpuState.FlagIf) == 0) c.InterruptShadow |= CpuState.ShadowSti;
                c.Rflags |= CpuState.FlagIf;
            }
            else c.Rflags &= ~CpuState.FlagIf;
            return Exec.Next;
        }
        if (!useVif) return e.Raise(PendingException.Gp0);
        if (!sti) { c.Rflags &= ~CpuState.FlagVif; return Exec.Next; }
        if ((c.Rflags & CpuState.FlagVip) != 0) return e.Raise(PendingException.Gp0); // a pending virtual interrupt must be delivered by the monitor
        c.Rflags |= CpuState.FlagVif;
        return Exec.Next;
    }

    /// <summary>POPF/POPFD/POPFQ with the SDM's per-mode rules for IOPL, IF, VM, VIF and VIP.</summary>
    private static Exec Popf(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = e.StackOperandSizePop(ref i);
        var mode = c.Mode;
        ulong old = c.Rflags;
        bool vme16 = false;
        if (mode == CpuMode.Virtual8086 && e.IopL != 3)
        {
            if ((c.Cr4 & CpuState.Cr4Vme) == 0 || size != 2) return e.Raise(PendingException.Gp0);
            vme16 = true;
        }
        int ss = e.StackAddrSize();
        ulong sp = c.Gpr[4] & Mask(ss);
        if (!e.Resolve(Seg.Ss, sp, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong v)) return Exec.Fault;
        ulong changeable = CpuState.StatusFlags | CpuState.FlagTf | CpuState.FlagDf | CpuState.FlagNt | CpuState.FlagAc | CpuState.FlagId
            | CpuState.FlagIf | CpuState.FlagIopl;
        if (size == 2) changeable &= 0xffff;
        ulong nf;
        if (vme16)
        {
            // VME: IF goes to VIF; a set IF with VIP pending, or TF, is #GP(0) (SDM POPF, virtual-8086 with VME).
            if (((v & CpuState.FlagIf) != 0 && (old & CpuState.FlagVip) != 0) || (v & CpuState.FlagTf) != 0) return e.Raise(PendingException.Gp0);
            changeable &= ~(CpuState.FlagIf | CpuState.FlagIopl);
            nf = (old & ~changeable) | (v & changeable);
            nf = (nf & ~CpuState.FlagVif) | ((v & CpuState.FlagIf) != 0 ? CpuState.FlagVif : 0);
        }
        else
        {
            if (mode == CpuMode.Virtual8086) changeable &= ~CpuState.FlagIopl;
            else if (mode != CpuMode.Real)
            {
                int cpl = c.Cpl;
                if (cpl > 0) changeable &= ~CpuState.FlagIopl;
                if (cpl > e.IopL) changeable &= ~CpuState.FlagIf;
            }
            nf = (old & ~changeable) | (v & changeable);
        }
        c.Rflags = (nf & ~CpuState.FlagRf) | 2;
        SetGprSized(c, 4, ss, sp + (ulong)size);
        return Exec.Next;
    }

    // ---- CPUID, MSRs, TSC -------------------------------------------------------------------------------

    private static Exec CpuidInsn(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var r = e.Cpuid.Query(c, (uint)c.Gpr[0], (uint)c.Gpr[1]);
        c.Gpr[0] = r.Eax; c.Gpr[3] = r.Ebx; c.Gpr[1] = r.Ecx; c.Gpr[2] = r.Edx;
        return Exec.Next;
    }

    private static Exec Rdmsr(InstructionEngine e, ref Instruction i)
    {
        if (!e.Cpl0()) return Exec.Fault;
        var c = e._cpu;
        uint index = (uint)c.Gpr[1];
        ulong v;
        if (e.MsrAbsent(index)) return e.Raise(PendingException.Gp0);
        if (index == ArchitecturalMsrs.Tsc && (e.Msrs == null || !e.Msrs.TryRead(c, index, out v))) v = e.Tsc.ReadTsc(c);
        else if ((e.Msrs == null || !e.Msrs.TryRead(c, index, out v)) && !ArchitecturalMsrs.Shared.TryRead(c, index, out v))
            return e.Raise(PendingException.Gp0);
        c.Gpr[0] = (uint)v; c.Gpr[2] = v >> 32;
        return Exec.Next;
    }

    // MSRs that exist only with a feature (SDM Vol. 4 table 2-2): IA32_TSC_AUX with RDTSCP or RDPID.
    private bool MsrAbsent(uint index) => index == ArchitecturalMsrs.TscAux && !_model.Has("rdtscp") && !_model.Has("rdpid");

    private static Exec Wrmsr(InstructionEngine e, ref Instruction i)
    {
        if (!e.Cpl0()) return Exec.Fault;
        var c = e._cpu;
        uint index = (uint)c.Gpr[1];
        ulong v = (c.Gpr[2] << 32) | (uint)c.Gpr[0];
        if (e.MsrAbsent(index)) return e.Raise(PendingException.Gp0);
        // EFER bits of features the model lacks are reserved (SCE without SYSCALL, LME without LM, NXE without NX).
        if (index == ArchitecturalMsrs.Efer && (v & ~(e._model.EferWritable | CpuState.EferLma)) != 0) return e.Raise(PendingException.Gp0);
        if ((e.Msrs == null || !e.Msrs.TryWrite(c, index, v)) && !ArchitecturalMsrs.Shared.TryWrite(c, index, v))
            return e.Raise(PendingException.Gp0);
        return Exec.Next;
    }

    private static Exec Rdtsc(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if ((c.Cr4 & CpuState.Cr4Tsd) != 0 && c.Cpl != 0) return e.Raise(PendingException.Gp0);
        ulong t = e.Tsc.ReadTsc(c);
        c.Gpr[0] = (uint)t; c.Gpr[2] = t >> 32;
        if (i.Code == Code.Rdtscp) c.Gpr[1] = (uint)c.TscAux;
        return Exec.Next;
    }

    /// <summary>INVLPG, WBINVD, INVD: privileged; the engine caches no translations or data, so nothing else to do.</summary>
    private static Exec PrivilegedNop(InstructionEngine e, ref Instruction i) => e.Cpl0() ? Exec.Next : Exec.Fault;

    // ---- stack frames, loops, double shifts -------------------------------------------------------------

    /// <summary>LEAVE: rSP ← rBP (stack-address size), then pop rBP (operand size).</summary>
    private static Exec Leave(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code switch { Code.Leavew => 2, Code.Leaved => 4, _ => 8 };
        int ss = e.StackAddrSize();
        ulong sp = c.Gpr[5] & Mask(ss);
        if (!e.Resolve(Seg.Ss, sp, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong v)) return Exec.Fault;
        SetGprSized(c, 4, ss, sp + (ulong)size);
        SetGprSized(c, 5, size, v);
        return Exec.Next;
    }

    /// <summary>ENTER imm16, imm8 (nesting level mod 32), undone completely if any push faults.</summary>
    private static Exec Enter(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = i.Code switch { Code.Enterw_imm16_imm8 => 2, Code.Enterd_imm16_imm8 => 4, _ => 8 };
        ulong alloc = i.Immediate16;
        int level = i.Immediate8_2nd & 31;
        int ss = e.StackAddrSize();
        ulong rsp = c.Gpr[4], rbp = c.Gpr[5];
        if (!e.PushValue(rbp & Mask(size), size)) return Exec.Fault;
        ulong frame = c.Gpr[4] & Mask(ss);
        if (level > 0)
        {
            ulong bp = rbp & Mask(ss);
            for (int k = 1; k < level; k++)
            {
                bp = (bp - (ulong)size) & Mask(ss);
                if (!e.Resolve(Seg.Ss, bp, size, PageAccess.Read, out var loc) || !e.ReadLoc(loc, out ulong v) || !e.PushValue(v, size))
                { c.Gpr[4] = rsp; return Exec.Fault; }
            }
            if (!e.PushValue(frame & Mask(size), size)) { c.Gpr[4] = rsp; return Exec.Fault; }
        }
        ulong newSp = ((c.Gpr[4] & Mask(ss)) - alloc) & Mask(ss);
        // The final stack pointer must address writable stack (SDM ENTER: #SS(0) beyond the limit).
        if (alloc != 0 && !e.Resolve(Seg.Ss, newSp, 1, PageAccess.Write, out _)) { c.Gpr[4] = rsp; return Exec.Fault; }
        SetGprSized(c, 5, size, frame);
        SetGprSized(c, 4, ss, newSp);
        return Exec.Next;
    }

    /// <summary>LOOP/LOOPE/LOOPNE and JCXZ/JECXZ/JRCXZ: the counter is CX, ECX or RCX by address size; flags untouched.</summary>
    private static Exec LoopJcxz(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        var code = i.Code;
        int cs = code switch
        {
            Code.Loop_rel8_16_CX or Code.Loop_rel8_32_CX or Code.Loope_rel8_16_CX or Code.Loope_rel8_32_CX
                or Code.Loopne_rel8_16_CX or Code.Loopne_rel8_32_CX or Code.Jcxz_rel8_16 or Code.Jcxz_rel8_32 => 2,
            Code.Loop_rel8_16_RCX or Code.Loop_rel8_64_RCX or Code.Loope_rel8_16_RCX or Code.Loope_rel8_64_RCX
                or Code.Loopne_rel8_16_RCX or Code.Loopne_rel8_64_RCX or Code.Jrcxz_rel8_16 or Code.Jrcxz_rel8_64 => 8,
            _ => 4,
        };
        ulong count = c.Gpr[1] & Mask(cs);
        bool take;
        var m = i.Mnemonic;
        if (m is Mnemonic.Jcxz or Mnemonic.Jecxz or Mnemonic.Jrcxz) take = count == 0;
        else
        {
            count = (count - 1) & Mask(cs);
            SetGprSized(c, 1, cs, count);
            take = count != 0;
            if (m == Mnemonic.Loope) take &= (c.Rflags & ZF) != 0;
            else if (m == Mnemonic.Loopne) take &= (c.Rflags & ZF) == 0;
        }
        if (!take) return Exec.Next;
        ulong save = c.Gpr[1];
        if (e.BranchTo(i.NearBranchTarget)) return Exec.Branch;
        c.Gpr[1] = save;
        return Exec.Fault;
    }

    /// <summary>SHLD/SHRD: count masked to 5 bits (6 with a 64-bit operand); a count above a 16-bit operand's width is undefined.</summary>
    private static Exec DoubleShift(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        int size = OpSize(ref i, 0);
        int bits = 8 * size;
        ulong msk = Mask(size);
        if (!e.ShiftOperands(ref i, size, 2, out int count, out bool mem, out var loc, out ulong a)) return Exec.Fault;
        if (count == 0) return Exec.Next;
        ulong src = GetGpr(c, i.Op1Register) & msk;
        ulong r;
        bool cf;
        bool left = i.Mnemonic == Mnemonic.Shld;
        if (size == 8 || count < bits)
        {
            if (left) { r = ((a << count) | (src >> (bits - count))) & msk; cf = ((a >> (bits - count)) & 1) != 0; }
            else { r = ((a >> count) | (src << (bits - count))) & msk; cf = ((a >> (count - 1)) & 1) != 0; }
        }
        else
        {
            // 16-bit operand with count 16..31 (undefined): shift through the 48-bit pattern dest:src:dest as Intel parts do.
            UInt128 w = ((UInt128)a << 32) | ((UInt128)src << 16) | a;
            if (left) { r = (ulong)(w >> (32 - count)) & 0xffff; cf = ((ulong)(w >> (48 - count)) & 1) != 0; }
            else { r = (ulong)(w >> count) & 0xffff; cf = ((ulong)(w >> (count - 1)) & 1) != 0; }
        }
        ulong top = 1ul << (bits - 1);
        ulong f = Szp(r, size) | (cf ? CF : 0) | ((((r ^ a) & top) != 0) ? OF : 0);
        if (mem) { if (!e.WriteLoc(loc, r)) return Exec.Fault; }
        else SetGpr(c, i.Op0Register, r);
        // OF is defined for a count of 1 (sign change); AF undefined (cleared).
        e.SetFlags(CpuState.StatusFlags, f);
        return Exec.Next;
    }

    /// <summary>LAHF/SAHF: AH ↔ SF, ZF, AF, PF, CF (bit 1 reads as 1).</summary>
    private static Exec LahfSahf(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        const ulong m = SF | ZF | AF | PF | CF;
        if (i.Mnemonic == Mnemonic.Lahf) SetGpr(c, Register.AH, (c.Rflags & m) | 2);
        else e.SetFlags(m, GetGpr(c, Register.AH) & m);
        return Exec.Next;
    }
}

public sealed unsafe partial class InstructionEngine
{
    // Fast system calls (SDM Vol. 2 SYSCALL, SYSRET, SYSENTER, SYSEXIT, SWAPGS): flat segments with fixed attributes,
    // selectors derived from IA32_STAR / IA32_SYSENTER_CS; no descriptor is read.

    private const uint FlatCode64 = 0xa09b, FlatCode32 = 0xc09b, FlatData = 0xc093, Dpl3 = 3u << 5;

    private static SegmentRegister Flat(ushort sel, uint access) => new(sel, new SegmentDescriptor(0, 0xffffffff, access));

    private bool In64BitMode => _cpu.Mode == CpuMode.Long64;

    private static Exec Swapgs(InstructionEngine e, ref Instruction i)
    {
        if (!e.In64BitMode) return e.Raise(PendingException.Ud);
        if (!e.Cpl0()) return Exec.Fault;
        var c = e._cpu;
        ref var gs = ref c.Segs[(int)Seg.Gs];
        ulong k = c.KernelGsBase;
        c.KernelGsBase = gs.Descriptor.Base;
        gs.Descriptor = gs.Descriptor with { Base = k };
        return Exec.Next;
    }

    /// <summary>
    /// SYSCALL. Intel: 64-bit mode only (#UD elsewhere). AMD (APM Vol. 3 SYSCALL): also from compatibility mode (to CSTAR, in
    /// 64-bit mode) and from legacy protected mode (ECX = return EIP, VM/IF/RF cleared, to STAR[31:0] in a flat 32-bit CS).
    /// </summary>
    private static Exec Syscall(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        bool amd = e._model.Vendor == CpuVendor.Amd;
        if ((c.Efer & CpuState.EferSce) == 0 || (!e.In64BitMode && !amd) || (c.Cr0 & CpuState.Cr0Pe) == 0 || c.Mode == CpuMode.Virtual8086)
            return e.Raise(PendingException.Ud);
        ushort sel = (ushort)(c.Star >> 32);
        if ((c.Efer & CpuState.EferLma) == 0)
        {
            c.Gpr[1] = (uint)i.NextIP;
            c.Rflags &= ~(CpuState.FlagVm | CpuState.FlagIf | CpuState.FlagRf);
            c.Segs[(int)Seg.Cs] = Flat((ushort)(sel & 0xfffc), FlatCode32);
            c.Segs[(int)Seg.Ss] = Flat((ushort)(sel + 8), FlatData);
            c.Rip = (uint)c.Star;
            return Exec.Branch;
        }
        c.Gpr[1] = i.NextIP;
        c.Gpr[11] = c.Rflags & ~CpuState.FlagRf;
        c.Rflags = (c.Rflags & ~(c.Sfmask | CpuState.FlagRf)) | 2;
        ulong target = e.In64BitMode ? c.Lstar : c.Cstar; // canonical by WRMSR's check
        c.Segs[(int)Seg.Cs] = Flat((ushort)(sel & 0xfffc), FlatCode64);
        c.Segs[(int)Seg.Ss] = Flat((ushort)(sel + 8), FlatData);
        c.Rip = target;
        return Exec.Branch;
    }

    /// <summary>SYSRET. Intel: 64-bit mode only. AMD: also from legacy protected mode (to a flat 32-bit CS at CPL 3 with
    /// EIP = ECX and RFLAGS.IF set, APM Vol. 3 SYSRET).</summary>
    private static Exec Sysret(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        bool amd = e._model.Vendor == CpuVendor.Amd;
        bool legacy = amd && (c.Efer & CpuState.EferLma) == 0 && (c.Cr0 & CpuState.Cr0Pe) != 0 && c.Mode != CpuMode.Virtual8086;
        if ((c.Efer & CpuState.EferSce) == 0 || (!e.In64BitMode && !legacy)) return e.Raise(PendingException.Ud);
        if (!e.Cpl0()) return Exec.Fault;
        ushort sel = (ushort)(c.Star >> 48);
        if (legacy)
        {
            c.Rflags |= CpuState.FlagIf;
            c.Segs[(int)Seg.Cs] = Flat((ushort)(sel | 3), FlatCode32 | Dpl3);
            c.Segs[(int)Seg.Ss] = Flat((ushort)((sel + 8) | 3), FlatData | Dpl3);
            c.Rip = (uint)c.Gpr[1];
            return Exec.Branch;
        }
        bool to64 = i.Code == Code.Sysretq;
        if (to64 && !Segmentation.IsCanonical(c, c.Gpr[1])) return e.Raise(PendingException.Gp0);
        c.Rflags = (c.Gpr[11] & 0x3c7fd7) | 2;
        c.Segs[(int)Seg.Cs] = to64 ? Flat((ushort)((sel + 16) | 3), FlatCode64 | Dpl3) : Flat((ushort)(sel | 3), FlatCode32 | Dpl3);
        // SS gets its selector from STAR and fixed flat DPL-3 attributes.
        c.Segs[(int)Seg.Ss] = Flat((ushort)((sel + 8) | 3), FlatData | Dpl3);
        c.Rip = to64 ? c.Gpr[1] : (uint)c.Gpr[1];
        return Exec.Branch;
    }

    private static Exec Sysenter(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        // AMD processors do not support SYSENTER/SYSEXIT in long mode: #UD (APM Vol. 3 SYSENTER).
        if (e._model.Vendor == CpuVendor.Amd && (c.Efer & CpuState.EferLma) != 0) return e.Raise(PendingException.Ud);
        if ((c.Cr0 & CpuState.Cr0Pe) == 0 || (c.SysenterCs & 0xfffc) == 0) return e.Raise(PendingException.Gp0);
        bool ia32e = (c.Efer & CpuState.EferLma) != 0;
        ushort sel = (ushort)(c.SysenterCs & 0xfffc);
        c.Rflags &= ~(CpuState.FlagVm | CpuState.FlagIf | CpuState.FlagRf);
        c.Segs[(int)Seg.Cs] = Flat(sel, ia32e ? FlatCode64 : FlatCode32);
        c.Segs[(int)Seg.Ss] = Flat((ushort)(sel + 8), FlatData);
        c.Rip = ia32e ? c.SysenterEip : (uint)c.SysenterEip;
        c.Gpr[4] = ia32e ? c.SysenterEsp : (uint)c.SysenterEsp;
        return Exec.Branch;
    }

    private static Exec Sysexit(InstructionEngine e, ref Instruction i)
    {
        var c = e._cpu;
        if (e._model.Vendor == CpuVendor.Amd && (c.Efer & CpuState.EferLma) != 0) return e.Raise(PendingException.Ud);
        if ((c.Cr0 & CpuState.Cr0Pe) == 0 || (c.SysenterCs & 0xfffc) == 0 || c.Cpl != 0) return e.Raise(PendingException.Gp0);
        bool to64 = i.Code == Code.Sysexitq;
        if (to64 && (!Segmentation.IsCanonical(c, c.Gpr[2]) || !Segmentation.IsCanonical(c, c.Gpr[1]))) return e.Raise(PendingException.Gp0);
        ushort sel = (ushort)c.SysenterCs;
        c.Segs[(int)Seg.Cs] = to64 ? Flat((ushort)((sel + 32) | 3), FlatCode64 | Dpl3) : Flat((ushort)((sel + 16) | 3), FlatCode32 | Dpl3);
        c.Segs[(int)Seg.Ss] = Flat((ushort)((sel + (to64 ? 40 : 24)) | 3), FlatData | Dpl3);
        c.Rip = to64 ? c.Gpr[2] : (uint)c.Gpr[2];
        c.Gpr[4] = to64 ? c.Gpr[1] : (uint)c.Gpr[1];
        return Exec.Branch;
    }
}
