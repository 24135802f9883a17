// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.X86;

/// <summary>
/// Logical (segment:offset) to linear address translation with the protection checks of SDM Vol. 3
/// 5.3-5.5 (limit, expand-down, type) and the 64-bit canonical check (SDM Vol. 1 3.3.7.1).
/// </summary>
public static class Segmentation
{
    /// <summary>True when <paramref name="la"/> is canonical for the current linear-address width (48, or 57 with CR4.LA57).</summary>
    public static bool IsCanonical(CpuState cpu, ulong la)
    {
        int bits = (cpu.Cr4 & CpuState.Cr4La57) != 0 ? 57 : 48;
        long s = (long)la << (64 - bits) >> (64 - bits);
        return (ulong)s == la;
    }

    /// <summary>
    /// Converts an 8-byte code/data (or LDT/TSS low half) descriptor as stored in the GDT/LDT (SDM Vol. 3 Figure 3-8) into the
    /// cached form: access rights in the VMX layout (type[3:0], S[4], DPL[6:5], P[7], AVL[12], L[13], D/B[14], G[15]) and the
    /// limit scaled by G to a byte limit.
    /// </summary>
    public static SegmentDescriptor FromRaw(ulong raw)
    {
        ulong b = ((raw >> 16) & 0xffffff) | ((raw >> 32) & 0xff000000);
        uint limit = (uint)(raw & 0xffff) | (uint)((raw >> 32) & 0xf0000);
        uint access = (uint)((raw >> 40) & 0xff) | (uint)((raw >> 40) & 0xf000);
        if ((access & 0x8000) != 0) limit = (limit << 12) | 0xfff;
        return new SegmentDescriptor(b, limit, access);
    }

    /// <summary>
    /// Translates <paramref name="offset"/> in segment <paramref name="seg"/> for an access of <paramref name="size"/> bytes.
    /// The offset must already be reduced to the address size. Violations give #SS(0) for SS and #GP(0) otherwise.
    /// </summary>
    public static AccessResult Linearize(CpuState cpu, Seg seg, ulong offset, int size, PageAccess access, out ulong linear)
    {
        ref readonly var sr = ref cpu.Segs[(int)seg];
        var fault = seg == Seg.Ss ? PendingException.Ss0 : PendingException.Gp0;
        var mode = cpu.Mode;
        if (mode == CpuMode.Long64)
        {
            // In 64-bit mode only FS and GS have a base, and no limit or type is checked.
            linear = seg is Seg.Fs or Seg.Gs ? sr.Descriptor.Base + offset : offset;
            if (!IsCanonical(cpu, linear) || (size > 1 && !IsCanonical(cpu, linear + (ulong)(size - 1))))
                return AccessResult.Fault(fault);
            return AccessResult.Ok;
        }
        var d = sr.Descriptor;
        linear = 0;
        if (mode != CpuMode.Real && mode != CpuMode.Virtual8086)
        {
            if ((d.Access & SegmentDescriptor.Unusable) != 0 || !d.Present) return AccessResult.Fault(fault);
            uint type = d.Access & 0xf;
            bool code = (type & 8) != 0;
            if ((access & PageAccess.Write) != 0)
            {
                if (code || (type & 2) == 0) return AccessResult.Fault(fault);
            }
            else if ((access & PageAccess.Execute) == 0 && code && (type & 2) == 0)
            {
                return AccessResult.Fault(fault); // execute-only code segment read
            }
        }
        ulong last = offset + (ulong)(size - 1);
        uint t = d.Access & 0xf;
        bool expandDown = (d.Access & 0x10) != 0 && (t & 0xc) == 0x4;
        if (expandDown)
        {
            ulong upper = d.Default32 ? 0xffffffffu : 0xffffu;
            if (offset <= d.Limit || last > upper || last < offset) return AccessResult.Fault(fault);
        }
        else if (last > d.Limit || last < offset)
        {
            return AccessResult.Fault(fault);
        }
        linear = (d.Base + offset) & 0xffffffff;
        return AccessResult.Ok;
    }
}
