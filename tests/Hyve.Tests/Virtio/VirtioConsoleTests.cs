// SPDX-License-Identifier: BSD-2-Clause
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Hyve.Config;
using Hyve.Pci;
using Hyve.Virtio;
using Xunit;

namespace Hyve.Tests.Virtio;

/// <summary>virtio-console against virtio 1.2 section 5.3: the single-port layout, and the MULTIPORT control conversation
/// as Linux's virtio_console driver holds it (DEVICE_READY, DEVICE_ADD, PORT_READY, CONSOLE_PORT, PORT_NAME, PORT_OPEN),
/// with data both ways on a named port behind a UNIX socket.</summary>
public sealed class VirtioConsoleTests : IDisposable
{
    private const ulong Wanted = VirtioPciDevice.FeatureVersion1 | VirtioConsole.FeatureMultiport | VirtioConsole.FeatureEmergWrite;
    private const ushort Size = 64;
    private readonly string _dir = Directory.CreateTempSubdirectory("hyve-vcon-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static VirtioTestDriver Console(params (string Name, string Path)[] ports)
    {
        var root = new ConfigTree();
        PciSlotOption.Parse(root, "3,virtio-console" + string.Concat(ports.Select(p => $",{p.Name}={p.Path}")));
        return new VirtioTestDriver("virtio-console", root);
    }

    private static void Start(VirtioTestDriver drv)
    {
        Assert.True(drv.Negotiate(Wanted));
        for (int q = 0; q < drv.Device.Queues.Count; q++) drv.SetupQueue(q, Size);
        drv.DriverOk();
    }

    // Control messages the device put in the control receive queue since used index `from`.
    private static List<(uint Id, ushort Event, ushort Value, string Name)> ControlReceived(VirtioTestDriver drv, int from, int to)
    {
        var list = new List<(uint, ushort, ushort, string)>();
        for (int i = from; i < to; i++)
        {
            var (id, len) = drv.UsedElem(VirtioConsole.ControlRxQueue, i, Size);
            var m = drv.Mem(VirtioTestDriver.DataBase + 0x1000 + id * 0x100, (int)len);
            list.Add((BinaryPrimitives.ReadUInt32LittleEndian(m), BinaryPrimitives.ReadUInt16LittleEndian(m[4..]),
                BinaryPrimitives.ReadUInt16LittleEndian(m[6..]), Encoding.ASCII.GetString(m[8..])));
        }
        return list;
    }

    // Posts n control receive buffers of 0x100 bytes at DataBase + 0x1000 + head * 0x100 (the head names the buffer).
    private void PostControlBuffers(VirtioTestDriver drv, int n)
    {
        for (int i = 0; i < n; i++, _controlPosted++) // one-descriptor chains: heads are handed out in order
            drv.Offer(VirtioConsole.ControlRxQueue, Size, (VirtioTestDriver.DataBase + 0x1000 + (ulong)(_controlPosted % Size) * 0x100, 0x100, true));
        drv.Notify(VirtioConsole.ControlRxQueue);
    }

    private int _controlPosted;

    private int _txMessages;

    private void SendControl(VirtioTestDriver drv, uint id, ushort ev, ushort value)
    {
        ulong at = VirtioTestDriver.DataBase + 0x8000 + (ulong)_txMessages * 8;
        var m = drv.Mem(at, 8);
        BinaryPrimitives.WriteUInt32LittleEndian(m, id);
        BinaryPrimitives.WriteUInt16LittleEndian(m[4..], ev);
        BinaryPrimitives.WriteUInt16LittleEndian(m[6..], value);
        drv.Offer(VirtioConsole.ControlTxQueue, Size, (at, 8, false));
        drv.NotifyAndWait(VirtioConsole.ControlTxQueue, (ushort)++_txMessages);
    }

    [Fact]
    public void OnePortIsTheTwoQueueConsoleWithoutMultiport()
    {
        string log = Path.Combine(_dir, "con.log");
        using var drv = Console(("con", log));
        var d = (VirtioConsole)drv.Device;
        Assert.Equal(0x1003, d.DeviceId); // transitional (0x1040 + 3 when legacy=false)
        Assert.Equal(2, d.Queues.Count);
        Assert.Equal(0ul, d.DeviceFeatures & VirtioConsole.FeatureMultiport);
        Assert.Equal(1u, (uint)drv.Read(VirtioPciDevice.DeviceOffset + 4, 4)); // max_nr_ports
        Start(drv);
        "hvc0 out"u8.CopyTo(drv.Mem(VirtioTestDriver.DataBase, 8));
        drv.Offer(1, Size, (VirtioTestDriver.DataBase, 8, false));
        drv.NotifyAndWait(1, 1);
        drv.Write(VirtioPciDevice.DeviceOffset + 8, 4, '!'); // emerg_wr
        drv.Device.Dispose();
        Assert.Equal("hvc0 out!", File.ReadAllText(log));
    }

    [Fact]
    public void MultiportAnnouncesTheConsoleAndNamedPortsAndCarriesDataBothWays()
    {
        string log = Path.Combine(_dir, "con.log"), sock = Path.Combine(_dir, "agent.sock");
        using var drv = Console(("con", log), ("org.hyve.agent", "unix:" + sock));
        var d = (VirtioConsole)drv.Device;
        Assert.Equal(6, d.Queues.Count); // port 0 rx/tx, control rx/tx, port 1 rx/tx
        Assert.NotEqual(0ul, d.DeviceFeatures & VirtioConsole.FeatureMultiport);
        Assert.Equal(2u, (uint)drv.Read(VirtioPciDevice.DeviceOffset + 4, 4));
        Start(drv);
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(sock));

        PostControlBuffers(drv, 16);
        SendControl(drv, 0, VirtioConsole.EventDeviceReady, 1);
        Assert.True(VirtioTestDriver.WaitFor(() => drv.UsedIdx(VirtioConsole.ControlRxQueue) == 2));
        Assert.Equal([(0u, VirtioConsole.EventDeviceAdd, (ushort)1, ""), (1u, VirtioConsole.EventDeviceAdd, (ushort)1, "")],
            ControlReceived(drv, 0, 2));

        SendControl(drv, 0, VirtioConsole.EventPortReady, 1);
        SendControl(drv, 1, VirtioConsole.EventPortReady, 1);
        Assert.True(VirtioTestDriver.WaitFor(() => drv.UsedIdx(VirtioConsole.ControlRxQueue) == 7));
        Assert.Equal(
        [
            (0u, VirtioConsole.EventConsolePort, (ushort)1, ""), (0u, VirtioConsole.EventPortName, (ushort)0, "con"),
            (0u, VirtioConsole.EventPortOpen, (ushort)1, ""),
            (1u, VirtioConsole.EventPortName, (ushort)0, "org.hyve.agent"), (1u, VirtioConsole.EventPortOpen, (ushort)1, ""),
        ], ControlReceived(drv, 2, 7));

        // A hostile driver: an id past the ports, an unknown event and a short message change nothing and break nothing.
        SendControl(drv, 99, VirtioConsole.EventPortReady, 1);
        SendControl(drv, 1, 0x7777, 1);
        drv.Offer(VirtioConsole.ControlTxQueue, Size, (VirtioTestDriver.DataBase + 0x9000, 3, false));
        drv.NotifyAndWait(VirtioConsole.ControlTxQueue, (ushort)++_txMessages);
        Assert.Equal(7, drv.UsedIdx(VirtioConsole.ControlRxQueue));
        Assert.Equal(0, drv.Status & VirtioPciDevice.StatusNeedsReset);

        SendControl(drv, 1, VirtioConsole.EventPortOpen, 1);
        Assert.True(d.GuestOpened(1));
        Assert.False(d.GuestOpened(0));

        // Port 1's transmit queue (5) reaches the socket; the socket's bytes fill port 1's receive queue (4).
        "to host\n"u8.CopyTo(drv.Mem(VirtioTestDriver.DataBase, 8));
        drv.Offer(5, Size, (VirtioTestDriver.DataBase, 8, false));
        drv.NotifyAndWait(5, 1);
        var got = new byte[8];
        int n = 0;
        client.ReceiveTimeout = 5000;
        while (n < 8) n += client.Receive(got, n, 8 - n, SocketFlags.None);
        Assert.Equal("to host\n", Encoding.ASCII.GetString(got));
        drv.Offer(4, Size, (VirtioTestDriver.DataBase + 0x100, 64, true));
        drv.Notify(4);
        client.Send("to guest"u8);
        Assert.True(VirtioTestDriver.WaitFor(() => drv.UsedIdx(4) == 1));
        var (_, len) = drv.UsedElem(4, 0, Size);
        Assert.Equal("to guest", Encoding.ASCII.GetString(drv.Mem(VirtioTestDriver.DataBase + 0x100, (int)len)));
        Assert.Equal(0, drv.UsedIdx(0)); // nothing leaked to port 0

        // A reset forgets the conversation.
        drv.Write(0x14, 1, 0);
        Assert.False(d.GuestOpened(1));
    }

    [Fact]
    public void ControlBacklogIsBoundedWhenTheDriverPostsNoBuffers()
    {
        using var drv = Console(("a", Path.Combine(_dir, "a.log")), ("b", Path.Combine(_dir, "b.log")));
        Start(drv);
        for (int i = 0; i < 200; i++) SendControl(drv, 0, VirtioConsole.EventDeviceReady, 1);
        PostControlBuffers(drv, Size);
        Assert.True(VirtioTestDriver.WaitFor(() => drv.UsedIdx(VirtioConsole.ControlRxQueue) == Size));
        drv.Notify(VirtioConsole.ControlRxQueue);
        Thread.Sleep(50);
        // 128 messages wait at most (8 per port of the 16 a device may have); 64 of them fit in the buffers posted.
        PostControlBuffers(drv, Size);
        Assert.True(VirtioTestDriver.WaitFor(() => drv.UsedIdx(VirtioConsole.ControlRxQueue) == 2 * Size));
        Thread.Sleep(50);
        Assert.Equal(2 * Size, drv.UsedIdx(VirtioConsole.ControlRxQueue));
    }

    [Fact]
    public void MultiportConversationSurvivesASnapshot()
    {
        using var drv = Console(("a", Path.Combine(_dir, "a.log")), ("b", Path.Combine(_dir, "b.log")));
        Start(drv);
        SendControl(drv, 0, VirtioConsole.EventDeviceReady, 1); // two DEVICE_ADDs wait: no control buffers yet
        SendControl(drv, 1, VirtioConsole.EventPortOpen, 1);
        var saved = new MemoryStream();
        drv.Device.Quiesce();
        drv.Device.SaveState(new BinaryWriter(saved));

        using var copy = Console(("a", Path.Combine(_dir, "a2.log")), ("b", Path.Combine(_dir, "b2.log")));
        // A restore brings guest memory back too: the rings the saved queue indices refer to.
        int ringBytes = (int)(VirtioTestDriver.DataBase + 0x10000 - VirtioTestDriver.RingBase);
        drv.Mem(VirtioTestDriver.RingBase, ringBytes).CopyTo(copy.Mem(VirtioTestDriver.RingBase, ringBytes));
        saved.Position = 0;
        copy.Device.LoadState(new BinaryReader(saved), copy.Device.StateVersion);
        copy.Device.Resume();
        Assert.True(((VirtioConsole)copy.Device).GuestOpened(1));
        _controlPosted = 0;
        PostControlBuffers(copy, 4);
        Assert.True(VirtioTestDriver.WaitFor(() => copy.UsedIdx(VirtioConsole.ControlRxQueue) == 2),
            $"control buffers used: {copy.UsedIdx(VirtioConsole.ControlRxQueue)}, status 0x{copy.Status:x}");
        Assert.Equal([(0u, VirtioConsole.EventDeviceAdd, (ushort)1, ""), (1u, VirtioConsole.EventDeviceAdd, (ushort)1, "")],
            ControlReceived(copy, 0, 2));

        // A snapshot of a device with another port count is refused.
        using var single = Console(("a", Path.Combine(_dir, "a3.log")));
        saved.Position = 0;
        Assert.Throws<InvalidDataException>(() => single.Device.LoadState(new BinaryReader(saved), single.Device.StateVersion));
    }

    [Theory]
    [InlineData(17, false, "at most 16")]
    [InlineData(2, true, "given twice")]
    public void RefusesTooManyPortsAndDuplicateNames(int ports, bool duplicate, string message)
    {
        var list = Enumerable.Range(0, ports).Select(i => (duplicate ? "same" : $"p{i}", Path.Combine(_dir, $"{i}.log"))).ToArray();
        var e = Assert.Throws<HostConfigException>(() => Console(list));
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
    }
}
