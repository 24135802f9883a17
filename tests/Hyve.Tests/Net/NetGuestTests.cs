// SPDX-License-Identifier: BSD-2-Clause
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Xunit;

namespace Hyve.Tests.Net;

/// <summary>A network namespace the test owns (ip netns), removed on dispose.</summary>
public sealed class NetNamespace : IDisposable
{
    public string Name { get; } = "hyvet" + Guid.NewGuid().ToString("N")[..8];

    public NetNamespace() => Run("ip", $"netns add {Name}");

    /// <summary>Why namespaces cannot be used here, or null when they can (root, and ip netns works).</summary>
    public static string? Unavailable { get; } = Probe();

    private static string? Probe()
    {
        if (Environment.UserName != "root") return "network namespaces and taps need root";
        if (!File.Exists("/usr/sbin/ip")) return "no /usr/sbin/ip (iproute2)";
        try { using var ns = new NetNamespace(); ns.Exec("ip link set lo up"); return null; }
        catch (Exception e) { return $"ip netns does not work here: {e.Message}"; }
    }

    public static string Run(string file, string args)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd();
        string e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {args}: {e.Trim()}");
        return o;
    }

    public string Exec(string cmd) => Run("ip", $"netns exec {Name} {cmd}");

    /// <summary>Starts a long-running command inside the namespace (ip netns exec execs it: the PID is the command's).</summary>
    public Process Spawn(string cmd) =>
        Process.Start(new ProcessStartInfo("ip", $"netns exec {Name} {cmd}") { RedirectStandardOutput = true, RedirectStandardError = true })!;

    public void Dispose()
    {
        try { Run("ip", $"netns del {Name}"); } catch (InvalidOperationException) { }
    }
}

/// <summary>A fact that needs root and working network namespaces; skipped with the reason otherwise.</summary>
public sealed class NetnsFactAttribute : FactAttribute
{
    public NetnsFactAttribute()
    {
        if (NetNamespace.Unavailable is string why) Skip = why;
    }
}

/// <summary>
/// Debian's cloud kernel on the software CPU with virtio-net (its own virtio_net module, tests/guests/net-guest), one
/// boot per backend, several checks each. Through slirp: the MAC bhyve's rule derives from the VM name and slot, a DHCP
/// lease of 10.0.2.15 with router 10.0.2.2 and DNS 10.0.2.3, link up, a file fetched over HTTP from a server the test runs
/// on the host's loopback (reached as 10.0.2.2) with the checksums the test computed, and a hostfwd rule carrying a host
/// connection to a port the guest listens on. Through a tap in a network namespace the test creates, serving HTTP there:
/// the given MAC and MTU, the file and its checksums, and the host kernel's GSO frames reaching the guest whole.
/// </summary>
public sealed class NetGuestTests
{
    private static string Kernel()
    {
        var k = Directory.GetFiles("/boot", "vmlinuz-*-cloud-amd64");
        Assert.True(k.Length > 0, "no /boot/vmlinuz-*-cloud-amd64: scripts/test installs linux-image-cloud-amd64");
        Array.Sort(k, StringComparer.Ordinal);
        return k[^1];
    }

    private static (string Dir, string Initrd, byte[] Blob) Prepare(int blobBytes)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"hyve-net-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(dir, "www"));
        string initrd = Path.Combine(dir, "initrd.gz");
        NetNamespace.Run(Path.Combine(HyveProcess.RepoRoot, "tests", "guests", "net-guest"), initrd);
        var blob = new byte[blobBytes];
        RandomNumberGenerator.Fill(blob);
        File.WriteAllBytes(Path.Combine(dir, "www", "blob"), blob);
        return (dir, initrd, blob);
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    private static void AssertFetched(string o, byte[] blob)
    {
        Assert.Contains($"HYVE-GOT {blob.Length} ", o, StringComparison.Ordinal);
        Assert.Contains($"HYVE-SHA256 {Convert.ToHexStringLower(SHA256.HashData(blob))}\n", o, StringComparison.Ordinal);
        Assert.Contains($"HYVE-MD5 {Convert.ToHexStringLower(MD5.HashData(blob))}\n", o, StringComparison.Ordinal);
    }

    [Fact]
    public void DebianGetsALeaseFetchesOverHttpAndAnswersAHostfwdThroughSlirp()
    {
        var (dir, initrd, blob) = Prepare(1 << 20);
        int httpPort = FreePort(), fwdPort = FreePort();
        using var httpd = Process.Start(new ProcessStartInfo("busybox", $"httpd -f -p 127.0.0.1:{httpPort} -h {Path.Combine(dir, "www")}"))!;
        try
        {
            string name = "net" + Guid.NewGuid().ToString("N")[..8];
            using var vm = HyveProcess.Start(Backends.Args("soft", "-m", "512M", "-s", "0,hostbridge", "-s", "1,lpc",
                "-s", $"3,virtio-net,slirp,hostfwd=tcp:127.0.0.1:{fwdPort}-:8022",
                "-o", $"boot.kernel={Kernel()}", "-o", $"boot.initrd={initrd}",
                "-o", $"boot.cmdline=console=ttyS0 quiet hyvenet=dhcp hyveurl=http://10.0.2.2:{httpPort}/blob hyvelisten=8022",
                "-l", "com1,stdio", name));
            vm.WaitForOutput("HYVE-LISTENING", 300);
            // The guest prints the marker just before nc listens: until it does, libslirp's SYN to the guest is refused
            // and the host connection closes empty, so try again for a while.
            string fromGuest = "";
            for (int i = 0; i < 60 && fromGuest.Length == 0; i++)
            {
                using var c = new TcpClient();
                c.Connect(IPAddress.Loopback, fwdPort);
                using var r = new StreamReader(c.GetStream());
                fromGuest = r.ReadLine() ?? "";
                if (fromGuest.Length == 0) Thread.Sleep(500);
            }
            vm.WaitForExit(120);
            string o = vm.Stdout;
            Assert.Equal(1, vm.ExitCode);
            Assert.DoesNotContain("HYVE-INSMOD-FAILED", o, StringComparison.Ordinal);
            var md5 = MD5.HashData(System.Text.Encoding.UTF8.GetBytes($"3-0-{name}"));
            Assert.Contains($"HYVE-MAC 00:a0:98:{md5[0]:x2}:{md5[1]:x2}:{md5[2]:x2}\n", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-LEASE ip=10.0.2.15 router=10.0.2.2 dns=10.0.2.3\n", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-LINK carrier=1 operstate=up mtu=1500\n", o, StringComparison.Ordinal);
            AssertFetched(o, blob);
            Assert.Equal("HYVE-FROM-GUEST", fromGuest);
            Assert.Contains("HYVE-NC-DONE", o, StringComparison.Ordinal);
            Assert.DoesNotContain("needs reset", vm.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            httpd.Kill();
            Directory.Delete(dir, true);
        }
    }

    [NetnsFact]
    public void DebianFetchesOverHttpThroughATapInANetworkNamespace()
    {
        var (dir, initrd, blob) = Prepare(2 << 20);
        using var ns = new NetNamespace();
        ns.Exec("ip link set lo up");
        ns.Exec("ip tuntap add dev tap7 mode tap");
        ns.Exec("ip addr add 10.0.3.1/24 dev tap7");
        ns.Exec("ip link set tap7 up");
        using var httpd = ns.Spawn($"busybox httpd -f -p 10.0.3.1:8080 -h {Path.Combine(dir, "www")}");
        try
        {
            using var vm = HyveProcess.StartInNetns(ns.Name, Backends.Args("soft", "-m", "512M", "-s", "0,hostbridge", "-s", "1,lpc",
                "-s", "3,virtio-net,tap7,mac=02:00:0a:00:03:02,mtu=1400",
                "-o", $"boot.kernel={Kernel()}", "-o", $"boot.initrd={initrd}",
                "-o", "boot.cmdline=console=ttyS0 quiet hyvenet=10.0.3.2/24 hyveurl=http://10.0.3.1:8080/blob",
                "-l", "com1,stdio", "tapvm"));
            vm.WaitForExit(300);
            string o = vm.Stdout;
            Assert.Equal(1, vm.ExitCode);
            Assert.Contains("HYVE-MAC 02:00:0a:00:03:02\n", o, StringComparison.Ordinal);
            Assert.Contains("HYVE-LINK carrier=1 operstate=up mtu=1400\n", o, StringComparison.Ordinal);
            AssertFetched(o, blob);
            Assert.DoesNotContain("needs reset", vm.Stderr, StringComparison.Ordinal);
            // The guest took TSO (GUEST_TSO4 through TUNSETOFFLOAD): the host sent the 2 MiB in far fewer frames than
            // 1360-byte segments would need (1542). How far fewer depends on how fast the guest reads (the host's TCP
            // batches more into one super-frame while the guest's window is full): 708 seen with translation on.
            var stats = ns.Exec("cat /sys/class/net/tap7/statistics/tx_packets");
            Assert.True(long.Parse(stats.Trim(), System.Globalization.CultureInfo.InvariantCulture) < 1100, $"tap tx_packets {stats}");
        }
        finally
        {
            httpd.Kill();
            Directory.Delete(dir, true);
        }
    }

    [NetnsFact]
    public void ATapThatCannotBeOpenedAndAnUnknownBackendEndWithStatus4()
    {
        using var ns = new NetNamespace();
        ns.Exec("ip tuntap add dev tap5 mode tun"); // a tun: attaching it as a tap is refused (EINVAL)
        using (var vm = HyveProcess.StartInNetns(ns.Name, Backends.Args("soft", "-s", "3,virtio-net,tap5", "-o", "boot.kernel=/dev/null", "bad")))
        {
            vm.WaitForExit(60);
            Assert.Equal(4, vm.ExitCode);
            Assert.Single(vm.Stderr.Trim().Split('\n'));
            Assert.Contains("tap5", vm.Stderr, StringComparison.Ordinal);
        }
        using var vm2 = HyveProcess.Start(Backends.Args("soft", "-s", "3,virtio-net,vde0", "-o", "boot.kernel=/dev/null", "bad"));
        vm2.WaitForExit(60);
        Assert.Equal(4, vm2.ExitCode);
        Assert.Contains("unknown network backend 'vde0'", vm2.Stderr, StringComparison.Ordinal);
    }
}
