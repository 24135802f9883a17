// SPDX-License-Identifier: BSD-2-Clause
using System.Runtime.InteropServices;
using Hyve.X86;

namespace Hyve.Tests.X86;

/// <summary>1 MiB of native guest RAM at GPA 0 with no MMIO, so a TLB (the engine's or the translator's) may cache host
/// addresses: the guest memory the block-cache and translator tests run on.</summary>
internal sealed unsafe class NativeTestRam : IGuestHostMemory, IDisposable
{
    public const int Size = 1 << 20;
    public readonly byte* Base = (byte*)NativeMemory.AllocZeroed(Size);
    public MapVersion Version { get; } = new();
    public Span<byte> Ram => new(Base, Size);

    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
    {
        if (length >= 0 && gpa <= Size && (ulong)length <= Size - gpa) { span = new Span<byte>(Base + gpa, length); return true; }
        span = default;
        return false;
    }

    public bool TryReadMmio(ulong gpa, int size, out ulong value) { value = 0; return false; }
    public bool TryWriteMmio(ulong gpa, int size, ulong value) => false;

    public byte* HostPage(ulong gpa, out bool writable)
    {
        writable = gpa < Size;
        return gpa < Size ? Base + (gpa & ~0xffful) : null;
    }

    public void Dispose() => NativeMemory.Free(Base);
}
