// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.Intrinsics.X86;

namespace Hyve.Snapshot;

/// <summary>The host CPU as a snapshot header records it: the CPUID vendor and a hash of the feature leaves (1, 7.0,
/// 0x80000001), so a restore can tell that it runs on a CPU with other features than the one the snapshot came from.</summary>
public static class CpuFingerprint
{
    /// <summary>The CPUID vendor string, or "unknown".</summary>
    public static string Vendor()
    {
        if (!X86Base.IsSupported) return "unknown";
        var (_, b, c, d) = X86Base.CpuId(0, 0);
        Span<byte> v = stackalloc byte[12];
        BitConverter.TryWriteBytes(v, b);
        BitConverter.TryWriteBytes(v[4..], d);
        BitConverter.TryWriteBytes(v[8..], c);
        return System.Text.Encoding.ASCII.GetString(v);
    }

    /// <summary>FNV-1a over the feature registers.</summary>
    public static ulong Features()
    {
        if (!X86Base.IsSupported) return 0;
        ulong h = 0xcbf29ce484222325ul;
        void Mix(int v) { for (int i = 0; i < 4; i++) h = (h ^ (byte)(v >> (8 * i))) * 0x100000001b3ul; }
        var (_, _, c1, d1) = X86Base.CpuId(1, 0);
        Mix(c1 & ~(1 << 27)); Mix(d1); // OSXSAVE follows the host OS, not the CPU
        var (_, b7, c7, d7) = X86Base.CpuId(7, 0);
        Mix(b7); Mix(c7); Mix(d7);
        var (_, _, ce, de) = X86Base.CpuId(unchecked((int)0x80000001), 0);
        Mix(ce); Mix(de);
        return h;
    }
}
