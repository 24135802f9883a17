// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.X86;

/// <summary>
/// Guest registers by name, as the VMM API and the control tool address them
/// (bhyve's vm_reg_name, reordered so general-purpose registers index 0-15 by their encoding).
/// </summary>
public enum Reg
{
    Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, R8, R9, R10, R11, R12, R13, R14, R15,
    Rip, Rflags,
    Cr0, Cr2, Cr3, Cr4, Cr8, Efer,
    Dr0, Dr1, Dr2, Dr3, Dr6, Dr7,
    // Segment registers and descriptor-table registers: their value is the selector;
    // the hidden part is a SegmentDescriptor.
    Es, Cs, Ss, Ds, Fs, Gs, Ldtr, Tr, Gdtr, Idtr,
}

/// <summary>The hidden part of a segment or descriptor-table register (bhyve's seg_desc).</summary>
/// <param name="Base">Linear base address.</param>
/// <param name="Limit">Limit in bytes, already scaled by granularity.</param>
/// <param name="Access">Access rights in VMX layout: type[3:0], S[4], DPL[6:5], P[7], AVL[12], L[13], D/B[14], G[15], unusable[16].</param>
public readonly record struct SegmentDescriptor(ulong Base, uint Limit, uint Access)
{
    /// <summary>Access bit 16: the segment is unusable (a null selector was loaded in protected mode).</summary>
    public const uint Unusable = 1u << 16;

    /// <summary>Descriptor privilege level.</summary>
    public int Dpl => (int)(Access >> 5) & 3;

    /// <summary>True for a present segment.</summary>
    public bool Present => (Access & 0x80) != 0;

    /// <summary>Code segment with L=1 (64-bit).</summary>
    public bool Long => (Access & (1u << 13)) != 0;

    /// <summary>D/B: default operation size 32 bits.</summary>
    public bool Default32 => (Access & (1u << 14)) != 0;
}
