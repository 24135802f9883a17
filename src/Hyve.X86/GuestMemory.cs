// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.X86;

/// <summary>
/// Guest-physical address space as the instruction engine and page walker see it: RAM is reached as
/// spans over the host mapping (never copied), everything else goes through MMIO callbacks.
/// </summary>
public interface IGuestPhysicalMemory
{
    /// <summary>
    /// Gets a span over guest RAM [<paramref name="gpa"/>, <paramref name="gpa"/>+<paramref name="length"/>) when the whole
    /// range is RAM in one contiguous host mapping; false otherwise (MMIO, unbacked, or straddling two regions).
    /// </summary>
    bool TryGetSpan(ulong gpa, int length, out Span<byte> span);

    /// <summary>
    /// Gets a read-only span over [<paramref name="gpa"/>, +<paramref name="length"/>) when it is RAM or read-only memory
    /// (a boot ROM) in one mapping, so instruction fetches and reads from ROM need not go through MMIO callbacks.
    /// By default the same as <see cref="TryGetSpan"/>.
    /// </summary>
    bool TryGetReadSpan(ulong gpa, int length, out ReadOnlySpan<byte> span)
    {
        bool ok = TryGetSpan(gpa, length, out var s);
        span = s;
        return ok;
    }

    /// <summary>Reads <paramref name="size"/> (1, 2, 4 or 8) bytes of MMIO at <paramref name="gpa"/>; false when nothing backs the address.</summary>
    bool TryReadMmio(ulong gpa, int size, out ulong value);

    /// <summary>Writes the low <paramref name="size"/> (1, 2, 4 or 8) bytes of <paramref name="value"/> at <paramref name="gpa"/>; false when nothing backs the address.</summary>
    bool TryWriteMmio(ulong gpa, int size, ulong value);
}

/// <summary>The guest's I/O-port space, used by IN/OUT/INS/OUTS.</summary>
public interface IGuestPorts
{
    /// <summary>Reads <paramref name="size"/> (1, 2 or 4) bytes from <paramref name="port"/>.</summary>
    uint In(ushort port, int size);

    /// <summary>Writes the low <paramref name="size"/> (1, 2 or 4) bytes of <paramref name="value"/> to <paramref name="port"/>.</summary>
    void Out(ushort port, int size, uint value);
}

/// <summary>Exception vectors the engine raises (SDM Vol. 3 Table 6-1).</summary>
public static class Vector
{
    /// <summary>#DE divide error.</summary>
    public const byte DE = 0;
    /// <summary>#DB debug.</summary>
    public const byte DB = 1;
    /// <summary>#BP breakpoint.</summary>
    public const byte BP = 3;
    /// <summary>#UD invalid opcode.</summary>
    public const byte UD = 6;
    /// <summary>#NM device not available.</summary>
    public const byte NM = 7;
    /// <summary>#TS invalid TSS.</summary>
    public const byte TS = 10;
    /// <summary>#NP segment not present.</summary>
    public const byte NP = 11;
    /// <summary>#SS stack-segment fault.</summary>
    public const byte SS = 12;
    /// <summary>#GP general protection.</summary>
    public const byte GP = 13;
    /// <summary>#PF page fault.</summary>
    public const byte PF = 14;
    /// <summary>#MF x87 floating-point error.</summary>
    public const byte MF = 16;
    /// <summary>#AC alignment check.</summary>
    public const byte AC = 17;
    /// <summary>#XM SIMD floating-point exception.</summary>
    public const byte XM = 19;
}

/// <summary>An exception recorded for delivery to the guest, in the form a VMM injects it.</summary>
/// <param name="Vector">Exception vector.</param>
/// <param name="HasErrorCode">Whether the vector pushes an error code.</param>
/// <param name="ErrorCode">The error code (valid when <paramref name="HasErrorCode"/>).</param>
/// <param name="Cr2">Faulting linear address for #PF (the value CR2 gets on delivery); 0 otherwise.</param>
public readonly record struct PendingException(byte Vector, bool HasErrorCode, uint ErrorCode, ulong Cr2)
{
    /// <summary>#GP(0).</summary>
    public static PendingException Gp0 => new(X86.Vector.GP, true, 0, 0);
    /// <summary>#SS(0).</summary>
    public static PendingException Ss0 => new(X86.Vector.SS, true, 0, 0);
    /// <summary>#UD.</summary>
    public static PendingException Ud => new(X86.Vector.UD, false, 0, 0);
    /// <summary>#NM.</summary>
    public static PendingException Nm => new(X86.Vector.NM, false, 0, 0);
    /// <summary>#PF with an error code and faulting address.</summary>
    public static PendingException PageFault(uint errorCode, ulong address) => new(X86.Vector.PF, true, errorCode, address);
}

/// <summary>Outcome of a guest-memory access through segmentation and paging.</summary>
public enum AccessStatus
{
    /// <summary>The access completed.</summary>
    Ok,
    /// <summary>The access faults in the guest; the exception is recorded for delivery.</summary>
    GuestFault,
    /// <summary>A guest-physical address is neither RAM nor claimed MMIO (the VMM decides what that means).</summary>
    Unbacked,
}
