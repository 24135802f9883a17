// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using Hyve.X86;

namespace Hyve.Tests.X86;

/// <summary>Guest RAM in a byte array at GPA 0, plus MMIO regions that record every access.</summary>
public sealed class TestMemory : IGuestPhysicalMemory
{
    public readonly byte[] Ram;
    public readonly List<MmioRegion> Regions = new();

    public TestMemory(int size) => Ram = new byte[size];

    public sealed class MmioRegion
    {
        public ulong Base;
        public byte[] Data = Array.Empty<byte>();
        public readonly List<(bool Write, ulong Offset, int Size, ulong Value)> Log = new();
    }

    public MmioRegion AddMmio(ulong gpa, int size)
    {
        var r = new MmioRegion { Base = gpa, Data = new byte[size] };
        Regions.Add(r);
        return r;
    }

    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
    {
        if (length >= 0 && gpa <= (ulong)Ram.Length && (ulong)length <= (ulong)Ram.Length - gpa)
        {
            span = Ram.AsSpan((int)gpa, length);
            return true;
        }
        span = default;
        return false;
    }

    private MmioRegion? Find(ulong gpa, int size)
    {
        foreach (var r in Regions)
            if (gpa >= r.Base && gpa + (ulong)size <= r.Base + (ulong)r.Data.Length) return r;
        return null;
    }

    public bool TryReadMmio(ulong gpa, int size, out ulong value)
    {
        var r = Find(gpa, size);
        value = 0;
        if (r is null) return false;
        int off = (int)(gpa - r.Base);
        for (int i = 0; i < size; i++) value |= (ulong)r.Data[off + i] << (8 * i);
        r.Log.Add((false, (ulong)off, size, value));
        return true;
    }

    public bool TryWriteMmio(ulong gpa, int size, ulong value)
    {
        var r = Find(gpa, size);
        if (r is null) return false;
        int off = (int)(gpa - r.Base);
        for (int i = 0; i < size; i++) r.Data[off + i] = (byte)(value >> (8 * i));
        r.Log.Add((true, (ulong)off, size, value));
        return true;
    }

    public ulong Read64(ulong gpa) => BinaryPrimitives.ReadUInt64LittleEndian(Ram.AsSpan((int)gpa));
    public uint Read32(ulong gpa) => BinaryPrimitives.ReadUInt32LittleEndian(Ram.AsSpan((int)gpa));
    public void Write64(ulong gpa, ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(Ram.AsSpan((int)gpa), v);
    public void Write32(ulong gpa, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(Ram.AsSpan((int)gpa), v);
    public void Write(ulong gpa, byte[] bytes) => bytes.CopyTo(Ram, (int)gpa);
}

/// <summary>Port space that records accesses and answers IN from a queue.</summary>
public sealed class TestPorts : IGuestPorts
{
    public readonly List<(bool Out, ushort Port, int Size, uint Value)> Log = new();
    public uint NextIn = 0x11223344;
    public uint In(ushort port, int size) { uint v = NextIn++; Log.Add((false, port, size, v)); return v; }
    public void Out(ushort port, int size, uint value) => Log.Add((true, port, size, value));
}
