// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Text;
using Hyve.X86;

namespace Hyve.Vmm.Control;

/// <summary>
/// The control socket's wire format. Every message is one frame, little-endian:
/// <c>[u32 length][u16 version][u16 code][payload]</c>, where <c>length</c> counts the bytes after itself
/// (so it is at least 4) and never exceeds <see cref="MaxFrameLength"/>. In a request <c>code</c> is a
/// <see cref="ControlOp"/>; in a response it is a <see cref="ControlStatus"/> and <c>version</c> is the server's
/// own version, so a client always learns what the server speaks. An error response carries a UTF-8 message.
/// Hand-written encoding: no reflection, so it survives NativeAOT trimming.
/// </summary>
public static class ControlProtocol
{
    /// <summary>The protocol version this build speaks. Bump it when a request or response layout changes;
    /// adding a new operation does not need a bump (old servers answer <see cref="ControlStatus.UnknownOp"/>).</summary>
    public const ushort Version = 1;

    /// <summary>Largest value of the length field (bytes after the length field itself).</summary>
    public const int MaxFrameLength = 64 * 1024;

    /// <summary>Size of the length field.</summary>
    public const int LengthSize = 4;

    /// <summary>Size of version plus code.</summary>
    public const int HeaderSize = 4;

    /// <summary>Longest string (in UTF-8 bytes) a frame may carry: names, error messages.</summary>
    public const int MaxStringBytes = 1024;

    /// <summary>errno-style number for a status, printed by hyvectl as bhyvectl prints errno.</summary>
    public static int Errno(ControlStatus status) => status switch
    {
        ControlStatus.Ok => 0,
        ControlStatus.InvalidArgument => 22,   // EINVAL
        ControlStatus.NotSupported => 95,      // EOPNOTSUPP
        ControlStatus.UnknownOp => 38,         // ENOSYS
        ControlStatus.FrameTooLarge => 7,      // E2BIG
        ControlStatus.Busy => 16,              // EBUSY
        ControlStatus.BadVersion or ControlStatus.Malformed => 71, // EPROTO
        _ => 5,                                // EIO
    };

    /// <summary>Writes a segment descriptor (base, limit, access).</summary>
    public static void WriteDescriptor(FrameWriter w, SegmentDescriptor d)
    {
        w.U64(d.Base);
        w.U32(d.Limit);
        w.U32(d.Access);
    }

    /// <summary>Reads a segment descriptor written by <see cref="WriteDescriptor"/>.</summary>
    public static SegmentDescriptor ReadDescriptor(ref FrameReader r) => new(r.U64(), r.U32(), r.U32());

    /// <summary>Writes a list of vCPU ids.</summary>
    public static void WriteCpuList(FrameWriter w, IReadOnlyList<int> cpus)
    {
        w.U32((uint)cpus.Count);
        for (int i = 0; i < cpus.Count; i++)
            w.I32(cpus[i]);
    }

    /// <summary>Reads a list of vCPU ids; the count is checked against the bytes actually present.</summary>
    public static int[] ReadCpuList(ref FrameReader r)
    {
        int n = r.Count(4);
        var cpus = new int[n];
        for (int i = 0; i < n; i++)
            cpus[i] = r.I32();
        return cpus;
    }

    /// <summary>Reads a register name and rejects values outside the <see cref="Reg"/> enum.</summary>
    public static Reg ReadReg(ref FrameReader r)
    {
        ushort v = r.U16();
        if (v > (ushort)Reg.Idtr)
            throw new ControlProtocolException($"register number {v} is out of range");
        return (Reg)v;
    }
}

/// <summary>Control operations (request codes). Values are part of the wire format: never renumber, only add.</summary>
public enum ControlOp : ushort
{
    /// <summary>→ i32 sockets, cores, threads, maxcpus.</summary>
    GetTopology = 1,
    /// <summary>→ i32 number of vCPUs.</summary>
    GetCpuCount = 2,
    /// <summary>→ u32 count, i32 × count.</summary>
    GetActiveCpus = 3,
    /// <summary>→ u32 count, i32 × count.</summary>
    GetSuspendedCpus = 4,
    /// <summary>→ u32 count, (i32 id, u64 length, u8 sysmem, string name) × count.</summary>
    GetMemSegs = 5,
    /// <summary>→ u32 count, (u64 gpa, u64 length, i32 segid, u64 segoff, i32 prot) × count.</summary>
    GetMemMap = 6,
    /// <summary>i32 vcpu, u16 reg → u64 value.</summary>
    GetRegister = 7,
    /// <summary>i32 vcpu, u16 reg, u64 value → (empty).</summary>
    SetRegister = 8,
    /// <summary>i32 vcpu, u16 reg → u64 base, u32 limit, u32 access.</summary>
    GetDescriptor = 9,
    /// <summary>i32 vcpu, u16 reg, u64 base, u32 limit, u32 access → (empty).</summary>
    SetDescriptor = 10,
    /// <summary>u8 how (<see cref="SuspendHow"/>) → (empty).</summary>
    Suspend = 11,
    /// <summary>→ i64 RTC time in Unix seconds.</summary>
    GetRtcTime = 12,
    /// <summary>i64 Unix seconds → (empty).</summary>
    SetRtcTime = 13,
    /// <summary>i32 offset → u8 value.</summary>
    GetRtcNvram = 14,
    /// <summary>i32 offset, u8 value → (empty).</summary>
    SetRtcNvram = 15,
    /// <summary>i32 vcpu → (empty).</summary>
    InjectNmi = 16,
    /// <summary>i32 vcpu (-1 for every vCPU), i32 lvt → (empty).</summary>
    AssertLapicLvt = 17,
    /// <summary>i32 vcpu → u64 info1, u64 info2.</summary>
    GetIntinfo = 18,
    /// <summary>string path, u8 flags (1: end the VM afterwards) → (empty).</summary>
    Checkpoint = 19,
    /// <summary>string path → (empty).</summary>
    DumpGuestMemory = 20,
    /// <summary>→ u32 count, (string name, u64 value) × count: the VM's counters (console bytes dropped, ...).</summary>
    GetStats = 21,
}

/// <summary>Response codes. Values are part of the wire format.</summary>
public enum ControlStatus : ushort
{
    /// <summary>Success; the payload is the operation's result.</summary>
    Ok = 0,
    /// <summary>The request's protocol version is not the server's.</summary>
    BadVersion = 1,
    /// <summary>The frame or its payload is malformed (short header, truncated or trailing payload).</summary>
    Malformed = 2,
    /// <summary>The frame's length field exceeds <see cref="ControlProtocol.MaxFrameLength"/>.</summary>
    FrameTooLarge = 3,
    /// <summary>The server does not know the operation.</summary>
    UnknownOp = 4,
    /// <summary>The VM rejected an argument (bad vCPU, register, value).</summary>
    InvalidArgument = 5,
    /// <summary>The VM does not support the operation.</summary>
    NotSupported = 6,
    /// <summary>The server has too many connections.</summary>
    Busy = 7,
    /// <summary>The operation failed inside the VM.</summary>
    Failed = 8,
}

/// <summary>A malformed frame or payload, or a protocol version mismatch.</summary>
public class ControlProtocolException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ControlProtocolException(string message) : base(message) { }
}

/// <summary>Builds one frame in a reusable buffer.</summary>
public sealed class FrameWriter
{
    private byte[] _buf = new byte[256];
    private int _pos;

    /// <summary>Starts a frame with the given version and code (op or status).</summary>
    public void Begin(ushort version, ushort code)
    {
        _pos = ControlProtocol.LengthSize;
        U16(version);
        U16(code);
    }

    /// <summary>Finishes the frame (fills in the length) and returns its bytes.</summary>
    public ReadOnlyMemory<byte> Finish()
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_buf, (uint)(_pos - ControlProtocol.LengthSize));
        return new ReadOnlyMemory<byte>(_buf, 0, _pos);
    }

    private Span<byte> Take(int n)
    {
        if (_pos + n - ControlProtocol.LengthSize > ControlProtocol.MaxFrameLength)
            throw new ControlProtocolException("response does not fit in one frame");
        if (_pos + n > _buf.Length)
            Array.Resize(ref _buf, Math.Max(_buf.Length * 2, _pos + n));
        var s = _buf.AsSpan(_pos, n);
        _pos += n;
        return s;
    }

    /// <summary>Appends a byte.</summary>
    public void U8(byte v) => Take(1)[0] = v;
    /// <summary>Appends a u16.</summary>
    public void U16(ushort v) => BinaryPrimitives.WriteUInt16LittleEndian(Take(2), v);
    /// <summary>Appends a u32.</summary>
    public void U32(uint v) => BinaryPrimitives.WriteUInt32LittleEndian(Take(4), v);
    /// <summary>Appends an i32.</summary>
    public void I32(int v) => BinaryPrimitives.WriteInt32LittleEndian(Take(4), v);
    /// <summary>Appends a u64.</summary>
    public void U64(ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(Take(8), v);
    /// <summary>Appends an i64.</summary>
    public void I64(long v) => BinaryPrimitives.WriteInt64LittleEndian(Take(8), v);

    /// <summary>Appends a string as u16 byte count and UTF-8, cut to <see cref="ControlProtocol.MaxStringBytes"/>.</summary>
    public void String(string s)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(s);
        int n = Math.Min(bytes.Length, ControlProtocol.MaxStringBytes);
        U16((ushort)n);
        bytes.AsSpan(0, n).CopyTo(Take(n));
    }
}

/// <summary>Reads a payload; any read past the end is a <see cref="ControlProtocolException"/>, never a crash.</summary>
public ref struct FrameReader
{
    private readonly ReadOnlySpan<byte> _data;
    private int _pos;

    /// <summary>Reads from the given payload.</summary>
    public FrameReader(ReadOnlySpan<byte> data)
    {
        _data = data;
        _pos = 0;
    }

    /// <summary>Bytes not yet read.</summary>
    public readonly int Remaining => _data.Length - _pos;

    private ReadOnlySpan<byte> Take(int n)
    {
        if (n < 0 || n > Remaining)
            throw new ControlProtocolException("payload is truncated");
        var s = _data.Slice(_pos, n);
        _pos += n;
        return s;
    }

    /// <summary>Reads a byte.</summary>
    public byte U8() => Take(1)[0];
    /// <summary>Reads a u16.</summary>
    public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
    /// <summary>Reads a u32.</summary>
    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
    /// <summary>Reads an i32.</summary>
    public int I32() => BinaryPrimitives.ReadInt32LittleEndian(Take(4));
    /// <summary>Reads a u64.</summary>
    public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));
    /// <summary>Reads an i64.</summary>
    public long I64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));

    /// <summary>Reads a string written by <see cref="FrameWriter.String"/>.</summary>
    public string String()
    {
        int n = U16();
        if (n > ControlProtocol.MaxStringBytes)
            throw new ControlProtocolException("string is too long");
        return Encoding.UTF8.GetString(Take(n));
    }

    /// <summary>Reads an element count and checks that at least <paramref name="minElementSize"/> bytes per element
    /// remain, so a hostile count cannot make the reader allocate more than the frame holds.</summary>
    public int Count(int minElementSize)
    {
        uint n = U32();
        if (n > (uint)(Remaining / minElementSize))
            throw new ControlProtocolException($"element count {n} exceeds the payload");
        return (int)n;
    }

    /// <summary>Checks the whole payload was consumed.</summary>
    public readonly void End()
    {
        if (Remaining != 0)
            throw new ControlProtocolException($"payload has {Remaining} unexpected trailing bytes");
    }
}
