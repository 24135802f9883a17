// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Net;

namespace Hyve.Tests.Net;

/// <summary>Builds and reads the Ethernet, ARP, IPv4, UDP, TCP and DHCP frames the network tests exchange (RFC 826, 791, 768, 793, 2131).</summary>
public static class NetFrames
{
    public static readonly byte[] GuestMac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    public static readonly byte[] Broadcast = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    public const ushort TypeIp = 0x0800, TypeArp = 0x0806;

    public static byte[] Ip(string a) => IPAddress.Parse(a).GetAddressBytes();

    public static byte[] Ethernet(byte[] dst, byte[] src, ushort type, ReadOnlySpan<byte> payload)
    {
        var f = new byte[14 + payload.Length];
        dst.CopyTo(f, 0);
        src.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), type);
        payload.CopyTo(f.AsSpan(14));
        return f;
    }

    public static byte[] ArpRequest(byte[] senderMac, string senderIp, string targetIp)
    {
        var a = new byte[28];
        BinaryPrimitives.WriteUInt16BigEndian(a, 1);
        BinaryPrimitives.WriteUInt16BigEndian(a.AsSpan(2), TypeIp);
        a[4] = 6; a[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(a.AsSpan(6), 1);
        senderMac.CopyTo(a, 8);
        Ip(senderIp).CopyTo(a, 14);
        Ip(targetIp).CopyTo(a, 24);
        return Ethernet(Broadcast, senderMac, TypeArp, a);
    }

    public static ushort Checksum(ReadOnlySpan<byte> data, uint sum = 0)
    {
        for (int i = 0; i + 1 < data.Length; i += 2) sum += BinaryPrimitives.ReadUInt16BigEndian(data[i..]);
        if ((data.Length & 1) != 0) sum += (uint)data[^1] << 8;
        while (sum >> 16 != 0) sum = (sum & 0xffff) + (sum >> 16);
        return (ushort)~sum;
    }

    public static byte[] Ipv4(byte proto, string src, string dst, ReadOnlySpan<byte> payload)
    {
        var p = new byte[20 + payload.Length];
        p[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), (ushort)p.Length);
        p[8] = 64;
        p[9] = proto;
        Ip(src).CopyTo(p, 12);
        Ip(dst).CopyTo(p, 16);
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(10), Checksum(p.AsSpan(0, 20)));
        payload.CopyTo(p.AsSpan(20));
        // UDP/TCP checksum over the pseudo-header.
        int csumAt = proto == 6 ? 16 : proto == 17 ? 6 : -1;
        if (csumAt >= 0)
        {
            var pseudo = new byte[12 + payload.Length];
            Ip(src).CopyTo(pseudo, 0);
            Ip(dst).CopyTo(pseudo, 4);
            pseudo[9] = proto;
            BinaryPrimitives.WriteUInt16BigEndian(pseudo.AsSpan(10), (ushort)payload.Length);
            p.AsSpan(20, payload.Length).CopyTo(pseudo.AsSpan(12));
            BinaryPrimitives.WriteUInt16BigEndian(pseudo.AsSpan(12 + csumAt), 0);
            ushort c = Checksum(pseudo);
            BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(20 + csumAt), c == 0 && proto == 17 ? (ushort)0xffff : c);
        }
        return p;
    }

    public static byte[] Udp(ushort sport, ushort dport, ReadOnlySpan<byte> data)
    {
        var u = new byte[8 + data.Length];
        BinaryPrimitives.WriteUInt16BigEndian(u, sport);
        BinaryPrimitives.WriteUInt16BigEndian(u.AsSpan(2), dport);
        BinaryPrimitives.WriteUInt16BigEndian(u.AsSpan(4), (ushort)u.Length);
        data.CopyTo(u.AsSpan(8));
        return u;
    }

    public static byte[] TcpSyn(ushort sport, ushort dport, uint seq)
    {
        var t = new byte[24];
        BinaryPrimitives.WriteUInt16BigEndian(t, sport);
        BinaryPrimitives.WriteUInt16BigEndian(t.AsSpan(2), dport);
        BinaryPrimitives.WriteUInt32BigEndian(t.AsSpan(4), seq);
        t[12] = 6 << 4; // 24-byte header: one MSS option
        t[13] = 0x02;   // SYN
        BinaryPrimitives.WriteUInt16BigEndian(t.AsSpan(14), 65535);
        t[20] = 2; t[21] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(t.AsSpan(22), 1460);
        return t;
    }

    /// <summary>A DHCPDISCOVER from <paramref name="mac"/> (broadcast flag set, 300-byte BOOTP message).</summary>
    public static byte[] DhcpDiscover(byte[] mac, uint xid)
    {
        var b = new byte[300];
        b[0] = 1; b[1] = 1; b[2] = 6;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(4), xid);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(10), 0x8000);
        mac.CopyTo(b, 28);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(236), 0x63825363);
        b[240] = 53; b[241] = 1; b[242] = 1; // DHCPDISCOVER
        b[243] = 255;
        return Ethernet(Broadcast, mac, TypeIp, Ipv4(17, "0.0.0.0", "255.255.255.255", Udp(68, 67, b)));
    }

    public static ushort EtherType(ReadOnlySpan<byte> f) => f.Length >= 14 ? BinaryPrimitives.ReadUInt16BigEndian(f[12..]) : (ushort)0;

    /// <summary>The BOOTP message inside a DHCP reply to the client port, or empty.</summary>
    public static ReadOnlySpan<byte> DhcpReply(ReadOnlySpan<byte> f)
    {
        if (EtherType(f) != TypeIp || f[14 + 9] != 17) return default;
        int ihl = (f[14] & 15) * 4;
        var udp = f[(14 + ihl)..];
        if (BinaryPrimitives.ReadUInt16BigEndian(udp[2..]) != 68) return default;
        return udp[8..];
    }

    /// <summary>DHCP option <paramref name="code"/>'s value in a BOOTP message, or null.</summary>
    public static byte[]? DhcpOption(ReadOnlySpan<byte> bootp, byte code)
    {
        for (int i = 240; i < bootp.Length;)
        {
            byte c = bootp[i];
            if (c == 255) break;
            if (c == 0) { i++; continue; }
            int len = bootp[i + 1];
            if (c == code) return bootp.Slice(i + 2, len).ToArray();
            i += 2 + len;
        }
        return null;
    }
}
