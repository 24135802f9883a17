// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm.Control;

/// <summary>The control server could not start (run directory, socket path, bind). The message is one line
/// naming the problem, ready to print after "hyve: ".</summary>
public class ControlServerException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ControlServerException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A live VM already listens on this VM's control socket.</summary>
public sealed class VmAlreadyRunningException : ControlServerException
{
    /// <summary>Creates the exception for a VM name and its socket path.</summary>
    public VmAlreadyRunningException(string vmName, string socketPath)
        : base($"VM \"{vmName}\" is already running (socket {socketPath})")
    {
        VmName = vmName;
        SocketPath = socketPath;
    }

    /// <summary>The VM's name.</summary>
    public string VmName { get; }

    /// <summary>The socket a live process holds.</summary>
    public string SocketPath { get; }
}

/// <summary>No VM of that name is running: no socket, or nobody accepts on it.</summary>
public sealed class VmNotRunningException : Exception
{
    /// <summary>Creates the exception.</summary>
    public VmNotRunningException(string vmName, string socketPath)
        : base($"VM \"{vmName}\" is not running (no listener at {socketPath})")
    {
        VmName = vmName;
        SocketPath = socketPath;
    }

    /// <summary>The VM's name.</summary>
    public string VmName { get; }

    /// <summary>The socket path tried.</summary>
    public string SocketPath { get; }
}

/// <summary>The server answered a request with an error status.</summary>
public sealed class ControlErrorException : Exception
{
    /// <summary>Creates the exception from a status and the server's message.</summary>
    public ControlErrorException(ControlStatus status, string message) : base(message) => Status = status;

    /// <summary>The response status.</summary>
    public ControlStatus Status { get; }

    /// <summary>errno-style number for the status.</summary>
    public int Errno => ControlProtocol.Errno(Status);
}
