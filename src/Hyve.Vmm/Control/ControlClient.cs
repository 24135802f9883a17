// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Net.Sockets;
using Hyve.X86;

namespace Hyve.Vmm.Control;

/// <summary>
/// The client side of a VM's control socket, as an <see cref="IVmControl"/>: each member is one request.
/// Error responses throw <see cref="ControlErrorException"/>; a bad or mismatched response throws
/// <see cref="ControlProtocolException"/>.
/// </summary>
public sealed class ControlClient : IVmControl, IDisposable
{
    private readonly Socket _socket;
    private readonly FrameWriter _writer = new();
    private readonly byte[] _lenBuf = new byte[ControlProtocol.LengthSize];

    private ControlClient(string name, Socket socket)
    {
        Name = name;
        _socket = socket;
    }

    /// <summary>Connects to the VM's socket in <paramref name="runDirectory"/> (default
    /// <see cref="ControlPaths.RunDirectory"/>).</summary>
    /// <exception cref="VmNotRunningException">No socket, or nobody listens on it.</exception>
    /// <exception cref="IOException">The socket exists but cannot be used (for example permission denied).</exception>
    public static ControlClient Connect(string vmName, string? runDirectory = null, TimeSpan? timeout = null)
    {
        string dir = runDirectory ?? ControlPaths.RunDirectory();
        if (!ControlPaths.IsValidVmName(vmName))
            throw new VmNotRunningException(vmName, Path.Combine(dir, vmName));
        string path = ControlPaths.SocketPath(vmName, dir);
        if (!ControlPaths.FitsSocketAddress(path) || !File.Exists(path))
            throw new VmNotRunningException(vmName, path);

        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e)
        {
            s.Dispose();
            if (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.AddressNotAvailable)
                throw new VmNotRunningException(vmName, path);
            throw new IOException($"cannot connect to control socket {path}: {e.Message}", e);
        }
        int ms = (int)(timeout ?? TimeSpan.FromSeconds(30)).TotalMilliseconds;
        s.ReceiveTimeout = ms;
        s.SendTimeout = ms;
        return new ControlClient(vmName, s);
    }

    /// <summary>Closes the connection.</summary>
    public void Dispose() => _socket.Dispose();

    /// <inheritdoc />
    public string Name { get; }

    /// <inheritdoc />
    public CpuTopology Topology
    {
        get
        {
            byte[] p = Call(ControlOp.GetTopology);
            var r = new FrameReader(p);
            var t = new CpuTopology(r.I32(), r.I32(), r.I32(), r.I32());
            r.End();
            return t;
        }
    }

    /// <inheritdoc />
    public int CpuCount
    {
        get
        {
            var r = new FrameReader(Call(ControlOp.GetCpuCount));
            int n = r.I32();
            r.End();
            return n;
        }
    }

    /// <inheritdoc />
    public IReadOnlyList<int> ActiveCpus() => CpuList(ControlOp.GetActiveCpus);

    /// <inheritdoc />
    public IReadOnlyList<int> SuspendedCpus() => CpuList(ControlOp.GetSuspendedCpus);

    private int[] CpuList(ControlOp op)
    {
        var r = new FrameReader(Call(op));
        int[] cpus = ControlProtocol.ReadCpuList(ref r);
        r.End();
        return cpus;
    }

    /// <inheritdoc />
    public IReadOnlyList<MemSegInfo> MemSegs()
    {
        var r = new FrameReader(Call(ControlOp.GetMemSegs));
        int n = r.Count(4 + 8 + 1 + 2);
        var segs = new MemSegInfo[n];
        for (int i = 0; i < n; i++)
            segs[i] = new MemSegInfo(r.I32(), r.U64(), r.U8() != 0, r.String());
        r.End();
        return segs;
    }

    /// <inheritdoc />
    public IReadOnlyList<MemMapInfo> MemMap()
    {
        var r = new FrameReader(Call(ControlOp.GetMemMap));
        int n = r.Count(8 + 8 + 4 + 8 + 4);
        var maps = new MemMapInfo[n];
        for (int i = 0; i < n; i++)
            maps[i] = new MemMapInfo(r.U64(), r.U64(), r.I32(), r.U64(), r.I32());
        r.End();
        return maps;
    }

    /// <inheritdoc />
    public ulong GetRegister(int vcpu, Reg reg)
    {
        Begin(ControlOp.GetRegister);
        _writer.I32(vcpu);
        _writer.U16((ushort)reg);
        var r = new FrameReader(Send());
        ulong v = r.U64();
        r.End();
        return v;
    }

    /// <inheritdoc />
    public void SetRegister(int vcpu, Reg reg, ulong value)
    {
        Begin(ControlOp.SetRegister);
        _writer.I32(vcpu);
        _writer.U16((ushort)reg);
        _writer.U64(value);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public SegmentDescriptor GetDescriptor(int vcpu, Reg reg)
    {
        Begin(ControlOp.GetDescriptor);
        _writer.I32(vcpu);
        _writer.U16((ushort)reg);
        var r = new FrameReader(Send());
        SegmentDescriptor d = ControlProtocol.ReadDescriptor(ref r);
        r.End();
        return d;
    }

    /// <inheritdoc />
    public void SetDescriptor(int vcpu, Reg reg, SegmentDescriptor desc)
    {
        Begin(ControlOp.SetDescriptor);
        _writer.I32(vcpu);
        _writer.U16((ushort)reg);
        ControlProtocol.WriteDescriptor(_writer, desc);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public void Suspend(SuspendHow how)
    {
        Begin(ControlOp.Suspend);
        _writer.U8((byte)how);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public long GetRtcTime()
    {
        var r = new FrameReader(Call(ControlOp.GetRtcTime));
        long secs = r.I64();
        r.End();
        return secs;
    }

    /// <inheritdoc />
    public void SetRtcTime(long unixSeconds)
    {
        Begin(ControlOp.SetRtcTime);
        _writer.I64(unixSeconds);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public byte GetRtcNvram(int offset)
    {
        Begin(ControlOp.GetRtcNvram);
        _writer.I32(offset);
        var r = new FrameReader(Send());
        byte v = r.U8();
        r.End();
        return v;
    }

    /// <inheritdoc />
    public void SetRtcNvram(int offset, byte value)
    {
        Begin(ControlOp.SetRtcNvram);
        _writer.I32(offset);
        _writer.U8(value);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public void InjectNmi(int vcpu)
    {
        Begin(ControlOp.InjectNmi);
        _writer.I32(vcpu);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public void AssertLapicLvt(int vcpu, int lvt)
    {
        Begin(ControlOp.AssertLapicLvt);
        _writer.I32(vcpu);
        _writer.I32(lvt);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public (ulong Info1, ulong Info2) GetIntinfo(int vcpu)
    {
        Begin(ControlOp.GetIntinfo);
        _writer.I32(vcpu);
        var r = new FrameReader(Send());
        ulong info1 = r.U64();
        ulong info2 = r.U64();
        r.End();
        return (info1, info2);
    }

    /// <inheritdoc />
    public void Checkpoint(string path, bool thenExit)
    {
        Begin(ControlOp.Checkpoint);
        _writer.String(path);
        _writer.U8(thenExit ? (byte)1 : (byte)0);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public void DumpGuestMemory(string path)
    {
        Begin(ControlOp.DumpGuestMemory);
        _writer.String(path);
        new FrameReader(Send()).End();
    }

    /// <inheritdoc />
    public IReadOnlyList<KeyValuePair<string, ulong>> GetStats()
    {
        var r = new FrameReader(Call(ControlOp.GetStats));
        uint n = r.U32();
        var list = new List<KeyValuePair<string, ulong>>();
        for (uint i = 0; i < n; i++)
        {
            string name = r.String();
            list.Add(new(name, r.U64()));
        }
        r.End();
        return list;
    }

    private byte[] Call(ControlOp op)
    {
        Begin(op);
        return Send();
    }

    private void Begin(ControlOp op) => _writer.Begin(ControlProtocol.Version, (ushort)op);

    /// <summary>Sends the frame being built and returns the payload of an Ok response.</summary>
    private byte[] Send()
    {
        try
        {
            ReadOnlySpan<byte> frame = _writer.Finish().Span;
            while (!frame.IsEmpty)
                frame = frame[_socket.Send(frame)..];

            ReceiveExact(_lenBuf);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(_lenBuf);
            if (len < ControlProtocol.HeaderSize || len > ControlProtocol.MaxFrameLength)
                throw new ControlProtocolException($"hyve sent a response frame of bad length {len}");
            byte[] body = new byte[len];
            ReceiveExact(body);
            ushort version = BinaryPrimitives.ReadUInt16LittleEndian(body);
            var status = (ControlStatus)BinaryPrimitives.ReadUInt16LittleEndian(body.AsSpan(2));
            byte[] payload = body[ControlProtocol.HeaderSize..];
            if (status == ControlStatus.Ok && version == ControlProtocol.Version)
                return payload;
            if (version != ControlProtocol.Version)
                throw new ControlProtocolException(
                    $"hyve speaks control protocol version {version}, this client speaks version {ControlProtocol.Version}");
            string message;
            try
            {
                var r = new FrameReader(payload);
                message = r.String();
            }
            catch (ControlProtocolException)
            {
                message = $"error status {(ushort)status}";
            }
            throw new ControlErrorException(status, message);
        }
        catch (SocketException e)
        {
            throw new IOException($"control connection to VM \"{Name}\" failed: {e.Message}", e);
        }
    }

    private void ReceiveExact(Span<byte> buf)
    {
        while (!buf.IsEmpty)
        {
            int n = _socket.Receive(buf);
            if (n == 0)
                throw new IOException($"VM \"{Name}\" closed the control connection");
            buf = buf[n..];
        }
    }
}
