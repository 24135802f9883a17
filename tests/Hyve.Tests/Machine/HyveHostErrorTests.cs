// SPDX-License-Identifier: BSD-2-Clause
using Xunit;

namespace Hyve.Tests.Machine;

/// <summary>Host-side mistakes end hyve with status 4 and one line naming the problem.</summary>
public class HyveHostErrorTests
{
    private static void AssertRefused(HyveProcess p, string fragment)
    {
        Assert.Equal(4, p.ExitCode);
        var lines = p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(lines, l => l.StartsWith("hyve: ", StringComparison.Ordinal) && l.Contains(fragment, StringComparison.Ordinal));
        Assert.DoesNotContain("   at ", p.Stderr, StringComparison.Ordinal);
    }

    // issue 18 #8: messages are sentences, never the runtime's resource keys (NativeAOT's UseSystemResourceKeys).
    [Fact]
    public void MessagesAreSentencesNotResourceKeys()
    {
        string rom = GuestRom.ToFile(new byte[4096]);
        using var p = HyveProcess.Run("-l", $"bootrom,{rom}", "-l", "com1,/nonexistent/dir/console.log", "vm1");
        AssertRefused(p, "/nonexistent/dir/console.log");
        Assert.DoesNotContain("IO_PathNotFound", p.Stderr, StringComparison.Ordinal);
        Assert.Contains("Could not find a part of the path", p.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingRomIsRefused()
    {
        using var p = HyveProcess.Run("-l", "bootrom,/nonexistent/rom.bin", "vm1");
        AssertRefused(p, "does not exist");
    }

    [Fact]
    public void EmptyRomIsRefused()
    {
        string path = GuestRom.ToFile([]);
        using var p = HyveProcess.Run("-l", $"bootrom,{path}", "vm1");
        AssertRefused(p, "is empty");
    }

    [Fact]
    public void RomThatIsNotAMultipleOf4KiBIsRefused()
    {
        string path = GuestRom.ToFile(new byte[4097]);
        using var p = HyveProcess.Run("-l", $"bootrom,{path}", "vm1");
        AssertRefused(p, "not a multiple of 4 KiB");
    }

    [Fact]
    public void RomOver16MiBIsRefused()
    {
        string path = GuestRom.ToFile(new byte[(16 << 20) + 4096]);
        using var p = HyveProcess.Run("-l", $"bootrom,{path}", "vm1");
        AssertRefused(p, "larger than 16 MiB");
    }

    [Fact]
    public void AUuidThatIsNotOneIsRefused()
    {
        string path = GuestRom.ToFile(new byte[4096]);
        using var p = HyveProcess.Run("-U", "not-a-uuid", "-l", $"bootrom,{path}", "vm1");
        AssertRefused(p, "-U not-a-uuid: not a UUID");
    }

    [Fact]
    public void BadTopologyIsRefused()
    {
        using var p = HyveProcess.Run("-c", "cpus=3,sockets=2", "vm1");
        Assert.Equal(4, p.ExitCode);
        Assert.StartsWith("hyve: ", p.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void ConfigDumpPrintsTheTree()
    {
        using var p = HyveProcess.Run("-c", "2", "-m", "512", "-o", "config.dump=1", "vm1");
        Assert.Contains("cpus=2\n", p.Stdout, StringComparison.Ordinal);
        Assert.Contains("memory.size=512", p.Stdout, StringComparison.Ordinal);
        Assert.Contains("name=vm1\n", p.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void HelpPrintsUsageAndExits0()
    {
        using var p = HyveProcess.Run("-h");
        Assert.Equal(0, p.ExitCode);
        Assert.StartsWith("Usage: hyve", p.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void HyvectlOnAMissingVmSaysItIsNotCreated()
    {
        var (status, stdout, _) = HyveProcess.CtlAlone("--vm=nosuchvm", "--get-cpu-topology");
        Assert.Equal(1, status);
        Assert.Equal("VM:nosuchvm is not created.\n", stdout);
    }
}
